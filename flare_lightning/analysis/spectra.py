"""Spectrum of FLARE's token mixing ``W_dec W_enc`` without forming the N x N matrix.

With ``A = W_enc`` [M, N] and ``B = W_dec`` [N, M], the mixing ``T = B A`` has rank <= M:
its non-zero eigenvalues are those of the M x M matrix ``A B`` and its singular values
are those of the M x M core ``R_B R_Aᵀ`` (QR factors ``B = Q_B R_B``, ``Aᵀ = Q_A R_A``).
Both cost O(N M²). Each factor is row-stochastic, so ``A B`` is too: its leading
eigenvalue is 1 and all eigenvalues lie in the unit disc.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_factors(
    w_enc: Tensor, w_dec: Tensor, mask: Tensor | None = None, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """``W_enc`` [..., M, N] and ``W_dec`` [..., N, M] in ``dtype``, padded points zeroed.

    Args:
        w_enc, w_dec: weights of one mixer, leading dims [B, H] (or any).
        mask: [B, N] bool, True on real points; padded rows of ``W_dec`` (not zero after
            the softmax over latents) and padded columns of ``W_enc`` are set to zero, so
            padding adds only zero singular values and zero eigenvalues.
        dtype: analysis precision.
    """
    if w_enc.shape[-1] != w_dec.shape[-2] or w_enc.shape[-2] != w_dec.shape[-1]:
        raise ValueError(
            f"expected W_enc [..., M, N] and W_dec [..., N, M]; got {tuple(w_enc.shape)} and {tuple(w_dec.shape)}"
        )
    a, b = w_enc.to(dtype), w_dec.to(dtype)
    if mask is not None:
        keep = mask.to(dtype).reshape(mask.shape[0], *([1] * (a.dim() - 3)), mask.shape[1], 1)  # [B, 1, N, 1]
        a, b = a * keep.transpose(-1, -2), b * keep
    return a, b


def mixing_eigenvalues(
    w_enc: Tensor, w_dec: Tensor, mask: Tensor | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Eigenvalues of ``W_dec W_enc`` from ``W_enc W_dec``: [..., M] complex, sorted by
    decreasing magnitude (when N < M, the last M - N are the zeros of ``W_enc W_dec``)."""
    a, b = masked_factors(w_enc, w_dec, mask, dtype)
    eig = torch.linalg.eigvals(a @ b)  # [..., M]
    order = eig.abs().argsort(dim=-1, descending=True)
    return eig.gather(-1, order)


def mixing_singular_values(
    w_enc: Tensor, w_dec: Tensor, mask: Tensor | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Singular values of ``W_dec W_enc`` [..., M], descending, through M x M QR cores;
    zeros pad the tail when there are fewer points than latents."""
    a, b = masked_factors(w_enc, w_dec, mask, dtype)
    r_b = torch.linalg.qr(b, mode="r").R  # [..., k, M], k = min(N, M)
    r_a = torch.linalg.qr(a.transpose(-1, -2), mode="r").R  # [..., k, M]
    sv = torch.linalg.svdvals(r_b @ r_a.transpose(-1, -2))  # [..., k]
    missing = a.shape[-2] - sv.shape[-1]
    return torch.nn.functional.pad(sv, (0, missing)) if missing > 0 else sv


def effective_rank(singular_values: Tensor) -> Tensor:
    """``exp`` of the entropy of the normalised singular values [..., M] -> [...]; between 1
    (one direction) and M (flat spectrum)."""
    p = singular_values / singular_values.sum(-1, keepdim=True)
    return torch.exp(-torch.special.xlogy(p, p).sum(-1))
