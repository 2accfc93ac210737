"""Spectral analysis of every FLARE mixer of a model over a few samples, and its
JSON-ready summary (mean and spread over samples)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from flare_lightning.analysis.capture import capture_keys
from flare_lightning.analysis.diversity import head_diversity
from flare_lightning.analysis.spectra import effective_rank, mixing_eigenvalues, mixing_singular_values


@dataclass
class MixerSpectra:
    """One mixer (block) over S samples, computed in fp64 per sample on its real points.

    Attributes:
        eigenvalues: [S, H, M] complex, eigenvalues of ``W_dec W_enc`` by decreasing magnitude.
        singular_values: [S, H, M], descending.
        effective_rank: [S, H].
        diversity_spectra: [S], see ``diversity.spectral_distance``.
        diversity_mixing: [S], see ``diversity.mixing_similarity``.
    """

    eigenvalues: Tensor
    singular_values: Tensor
    effective_rank: Tensor
    diversity_spectra: Tensor
    diversity_mixing: Tensor

    @staticmethod
    def cat(parts: list[MixerSpectra]) -> MixerSpectra:
        """Join the samples of several batches."""
        return MixerSpectra(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(MixerSpectra)))


@torch.no_grad()
def analyse_mixers(model: nn.Module, x: Tensor, mask: Tensor | None = None) -> list[MixerSpectra]:
    """Spectra, effective ranks and head diversity of every mixer of ``model`` for a batch.

    Args:
        model: called as ``model(x, mask)`` (``FLARE`` on normalised inputs, or a
            ``SurrogateModule`` on raw ones), see ``capture.capture_keys``.
        x: inputs [B, N, in_dim].
        mask: [B, N] bool, True on real points; each sample is analysed on its real
            points only, so padding never changes its numbers.
    """
    results = []
    for keys in capture_keys(model, x, mask):
        rows: dict[str, list[Tensor]] = {f.name: [] for f in fields(MixerSpectra)}
        for i in range(keys.batch_size):  # one sample at a time bounds the fp64 memory
            w_enc, w_dec = keys.weights(sample=i)  # [H, M, n], [H, n, M]
            sv = mixing_singular_values(w_enc, w_dec)
            div = head_diversity(w_enc, w_dec, sv)
            rows["eigenvalues"].append(mixing_eigenvalues(w_enc, w_dec))
            rows["singular_values"].append(sv)
            rows["effective_rank"].append(effective_rank(sv))
            rows["diversity_spectra"].append(div["spectra"])
            rows["diversity_mixing"].append(div["mixing"])
        results.append(MixerSpectra(**{k: torch.stack(v).cpu() for k, v in rows.items()}))
    return results


def merge_batches(per_batch: list[list[MixerSpectra]]) -> list[MixerSpectra]:
    """Per-batch results of ``analyse_mixers`` -> one ``MixerSpectra`` per block."""
    return [MixerSpectra.cat(list(block)) for block in zip(*per_batch, strict=True)]


def _stats(t: Tensor) -> dict[str, object]:
    """Mean and standard deviation over the sample axis, as nested lists (NaN -> None)."""
    std = t.std(0, unbiased=False) if t.shape[0] > 1 else torch.zeros_like(t[0])
    return {"mean": _tolist(t.mean(0)), "std": _tolist(std)}


def _tolist(t: Tensor) -> object:
    """Nested lists of floats, non-finite values as None (strict JSON)."""

    def clean(v: object) -> object:
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v if math.isfinite(v) else None

    return clean(t.tolist())


def summarise(blocks: list[MixerSpectra]) -> dict[str, object]:
    """JSON-ready summary over samples, per block: eigenvalue magnitudes and singular values
    ([H][M] mean and std), effective rank ([H]), diversity (scalars)."""
    first = blocks[0].singular_values
    return {
        "num_samples": first.shape[0],
        "num_blocks": len(blocks),
        "num_heads": first.shape[1],
        "num_latents": first.shape[2],
        "blocks": [
            {
                "eigenvalue_abs": _stats(b.eigenvalues.abs()),
                "singular_values": _stats(b.singular_values),
                "effective_rank": _stats(b.effective_rank),
                "diversity": {"spectra": _stats(b.diversity_spectra), "mixing": _stats(b.diversity_mixing)},
            }
            for b in blocks
        ],
    }
