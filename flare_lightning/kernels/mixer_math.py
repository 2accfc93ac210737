"""The FLARE mixer's mathematics in plain PyTorch, written once.

Per head, latents q [M, D] and keys k [N, D] give logits ``S = s q kᵀ`` [M, N]. The encode
``z = softmax_N(S) v`` sees only real points (padded keys get -inf); the decode
``y = softmax_M(Sᵀ) z`` is pointwise. Because the encode is a sum over points it can be
computed in parts (point chunks, or the shares of context-parallel ranks) as statistics
(running max m, sum l of exp(S - m), weighted value sum acc) that merge exactly by
log-sum-exp. The reference mixers, ``FlareAttention``'s chunked evaluation and the
context-parallel mixer all build on these functions; the Triton kernels compute the same
in their own tiles (base-2 exponentials): ``merge_normalised`` joins their outputs, and
``normalised_stats`` turns one into statistics that merge with any other.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EncodeStats = tuple[Tensor, Tensor, Tensor]  # running max [..., M], sum [..., M], acc [..., M, D]
EMPTY_LSE2 = -1e29  # below it a base-2 log-sum-exp of the Triton encode means "no real point" (its sentinel is -1e30)


def latent_logits(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """``s q kᵀ`` [B, H, M, N] of latents q [H, M, D] and keys k [B, H, N, D]."""
    return torch.einsum("hmd,bhnd->bhmn", q, k) * scale


def mask_keys(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Encode logits [B, H, M, N] with padded keys (mask [B, N] False) at -inf."""
    return logits if mask is None else logits.masked_fill(~mask[:, None, None, :], float("-inf"))


def finite_shift(m: Tensor) -> Tensor:
    """A max used as an exponent shift, 0 where it is -inf (no real point: nothing to shift)."""
    return torch.where(torch.isinf(m), 0.0, m)


def encode_sums(enc: Tensor, v: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ_n exp(enc - shift), Σ_n exp(enc - shift) v) of masked logits enc [B, H, M, n] and
    values v [B, H, n, D]: [B, H, M] and [B, H, M, D]."""
    p = torch.exp(enc - finite_shift(shift)[..., None])
    return p.sum(dim=-1), p @ v


def encode_stats(enc: Tensor, v: Tensor) -> EncodeStats:
    """(m, l, acc) of one part's masked logits enc [B, H, M, n]: m = -inf without real points."""
    m = enc.amax(dim=-1) if enc.shape[-1] else enc.new_full(enc.shape[:-1], float("-inf"))
    return (m, *encode_sums(enc, v, m))


def merge_stats(parts: EncodeStats) -> EncodeStats:
    """Join statistics stacked along a leading axis [P, ...] into one set (log-sum-exp);
    parts without real points (m = -inf) contribute nothing."""
    ms, ls, accs = parts
    mx = ms.amax(0)
    w = torch.where(torch.isinf(ms), 0.0, torch.exp(ms - finite_shift(mx)))  # [P, ...]
    return mx, (w * ls).sum(0), (w[..., None] * accs).sum(0)


def merge_normalised(lses: Tensor, zs: Tensor) -> tuple[Tensor, Tensor]:
    """Join normalised parts (z [P, ..., M, D] with its base-2 log-sum-exp lse [P, ..., M], the
    Triton encode's outputs) into the whole (z, lse); an empty part has lse ~ -1e30 (weight 0)."""
    mx = lses.amax(0)
    w = torch.exp2(lses - mx)
    total = w.sum(0)
    return (w[..., None] * zs).sum(0) / total[..., None], mx + torch.log2(total)


def normalised_stats(z: Tensor, lse2: Tensor) -> EncodeStats:
    """(m, l, acc) of a normalised part (z [..., M, D] and its base-2 log-sum-exp [..., M], the
    Triton encode's outputs): m = lse·ln 2, l = 1, acc = z, so that it merges with any other
    part by ``merge_stats``; a latent without real points (lse ~ -1e30) gets m = -inf, l = 0."""
    empty = lse2 < EMPTY_LSE2
    m = torch.where(empty, float("-inf"), lse2 * math.log(2.0))
    return m, (~empty).to(z.dtype), torch.where(empty[..., None], 0.0, z)


def decode(logits: Tensor, z: Tensor) -> Tensor:
    """``softmax_M(Sᵀ) z`` [B, H, n, D] of logits [B, H, M, n] and latent summaries z [B, H, M, D]."""
    return torch.softmax(logits.transpose(-1, -2), dim=-1) @ z
