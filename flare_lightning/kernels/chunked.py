"""Portable fast FLARE mixer: two SDPA calls, the decode folded over point chunks.

The paper's decode call ``SDPA(k, latents, z)`` has only M keys, and fused attention
backwards parallelise over keys: B·H thread blocks walk all N points (34 of 38 ms of a
mixer at N = 1M on an H100). Splitting the points into C chunks and folding the chunks
into the batch or head dimension gives B·H·C blocks for the same arithmetic; z is
repeated per chunk (small: [M, D] each) and autograd sums its gradient back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flare_lightning.kernels.reference import check_mixer_inputs, flash_only

# Points per decode chunk on CUDA: 1024, 4096 and 16384 timed within 2% of each other at
# N = 2^20 on an H200 (benchmarks/NOTES_mixer.md). On CPU the fold did not pay (the CPU
# SDPA kernels already split over queries), so there the decode is one call.
DEFAULT_CHUNK = 4096


def _fold(t: Tensor, chunks: int) -> tuple[Tensor, bool]:
    """[B, H, C·n, D] -> a 4-D view with the C chunks in the head (True) or batch dim."""
    b, h, n, d = t.shape
    t5 = t.unflatten(2, (chunks, n // chunks))  # [B, H, C, n_c, D]
    try:
        return t5.view(b, h * chunks, n // chunks, d), True
    except RuntimeError:  # e.g. the [B, N, H, D] layout of a model's projections
        return t5.transpose(1, 2).reshape(b * chunks, h, n // chunks, d), False


def flare_mix_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    scale: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """FLARE mixer through two SDPA calls, the decode split into point chunks.

    Args:
        q: latent queries [H, M, D], same dtype as k.
        k: keys [B, H, N, D].
        v: values [B, H, N, D].
        mask: [B, N] bool, True on real points, or None.
        scale: logit scale s.
        chunk_size: points per decode chunk (N is zero-padded to a multiple of it);
            None: ``DEFAULT_CHUNK`` on CUDA, no split elsewhere.

    Returns:
        y [B, H, N, D].
    """
    check_mixer_inputs(q, k, v, mask)
    b, h, n, d = k.shape
    m = q.shape[1]
    latents = q.unsqueeze(0).expand(b, -1, -1, -1)  # [B, H, M, D]
    enc_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, N]
    half = k.is_cuda and k.dtype in (torch.float16, torch.bfloat16)
    with flash_only(half and mask is None):
        z = F.scaled_dot_product_attention(latents, k, v, attn_mask=enc_mask, scale=scale)  # [B, H, M, D]

    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK if k.is_cuda else n
    chunk = max(1, min(chunk_size, n))
    chunks = -(-n // chunk)
    kp = F.pad(k, (0, 0, 0, chunks * chunk - n)) if chunks * chunk != n else k
    k_f, in_heads = _fold(kp, chunks)
    if in_heads:
        lat_f = latents.unsqueeze(2).expand(b, h, chunks, m, d).reshape(b, h * chunks, m, d)
        z_f = z.unsqueeze(2).expand(b, h, chunks, m, d).reshape(b, h * chunks, m, d)
    else:
        lat_f = latents.unsqueeze(1).expand(b, chunks, h, m, d).reshape(b * chunks, h, m, d)
        z_f = z.unsqueeze(1).expand(b, chunks, h, m, d).reshape(b * chunks, h, m, d)
    with flash_only(half):
        y_f = F.scaled_dot_product_attention(k_f, lat_f, z_f, scale=scale)
    if in_heads:
        y = y_f.reshape(b, h, chunks * chunk, d)
    else:
        y = y_f.reshape(b, chunks, h, chunk, d).transpose(1, 2).reshape(b, h, chunks * chunk, d)
    return y[:, :, :n] if chunks * chunk != n else y
