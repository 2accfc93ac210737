"""How different the heads of one FLARE mixer are.

Two measures, both 0 when all heads are identical:

- **spectra**: total-variation distance between heads' normalised singular-value
  distributions (in [0, 1]); compares *how much* each head mixes, not *where*.
- **mixing**: ``1 - cos`` between heads' mixing matrices ``T_h = W_dec,h W_enc,h`` in the
  Frobenius inner product (in [0, 1], the mixings being non-negative); compares the
  point-space subspaces the heads read from and write to, weighted by their strength.
  ``<T_h, T_g> = sum((B_hᵀ B_g) ∘ (A_h A_gᵀ))`` uses M x M Gram blocks: O(N (H M)²), no N x N.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flare_lightning.analysis.spectra import masked_factors


def spectral_distance(singular_values: Tensor) -> Tensor:
    """Pairwise total-variation distance between heads' normalised spectra: [..., H, M] -> [..., H, H]."""
    p = singular_values / singular_values.sum(-1, keepdim=True)
    return 0.5 * (p.unsqueeze(-2) - p.unsqueeze(-3)).abs().sum(-1)


def mixing_similarity(
    w_enc: Tensor, w_dec: Tensor, mask: Tensor | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Frobenius cosine between heads' mixing matrices: W_enc [..., H, M, N], W_dec
    [..., H, N, M] -> [..., H, H] (1 on the diagonal)."""
    a, b = masked_factors(w_enc, w_dec, mask, dtype)
    gram_dec = torch.einsum("...hnm,...gnk->...hgmk", b, b)  # B_hᵀ B_g
    gram_enc = torch.einsum("...hmn,...gkn->...hgmk", a, a)  # A_h A_gᵀ
    inner = (gram_dec * gram_enc).sum((-1, -2))  # <T_h, T_g>_F  [..., H, H]
    norm = inner.diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(dtype).tiny).sqrt()
    return inner / (norm.unsqueeze(-1) * norm.unsqueeze(-2))


def mean_over_pairs(pairwise: Tensor) -> Tensor:
    """Mean of a [..., H, H] matrix over head pairs h != g (0 for a single head)."""
    h = pairwise.shape[-1]
    if h < 2:
        return pairwise.new_zeros(pairwise.shape[:-2])
    off = ~torch.eye(h, dtype=torch.bool, device=pairwise.device)
    return pairwise[..., off].mean(-1)


def head_diversity(
    w_enc: Tensor, w_dec: Tensor, singular_values: Tensor, mask: Tensor | None = None
) -> dict[str, Tensor]:
    """Both diversity measures of one mixer, averaged over head pairs -> ``{name: [...]}``.

    Args:
        w_enc, w_dec: [..., H, M, N] and [..., H, N, M].
        singular_values: [..., H, M] from ``mixing_singular_values``.
        mask: [B, N] bool, True on real points.
    """
    cos = mixing_similarity(w_enc, w_dec, mask)
    return {
        "spectra": mean_over_pairs(spectral_distance(singular_values)),
        "mixing": mean_over_pairs((1.0 - cos).clamp_min(0.0)),
    }
