"""The FLARE mixer over one share of a sample's points, exact for the whole sample.

The encode ``z = softmax_N(s q kᵀ) v`` is a sum over points: each rank computes its
share's statistics, a log-sum-exp join across the group merges them (the Triton path: one
all-gather of ``[lse, z]``, ``collectives.merge_latents_lse2``), and the decode
``y = softmax_M(s k qᵀ) z`` is local. In backward the gradient of z is summed over the
ranks before the encode's own backward (``collectives.all_reduce_sum``).

Two implementations: ``context_mix_torch`` (plain PyTorch, any device, materialises the
[B, H, M, n] logits of the local share) and ``context_mix_triton`` (the fused Triton
kernels, whose encode already produces (z, log-sum-exp) per latent, joined across ranks
between the encode and the decode kernels; nothing of size n x M is stored).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flare_lightning.kernels.dispatch import mixer_dtype, resolve_backend
from flare_lightning.kernels.mixer_math import decode, encode_sums, latent_logits, mask_keys
from flare_lightning.kernels.reference import check_mixer_inputs
from flare_lightning.parallel.collectives import all_reduce_max, all_reduce_sum, merge_latents_lse2


def context_mix_torch(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, group) -> Tensor:
    """Mixer output [B, H, n, D] for this rank's n points, computed in float32 (float64 for
    float64 inputs) whatever autocast says; q [H, M, D], k, v [B, H, n, D], mask [B, n]."""
    dtype = torch.promote_types(k.dtype, torch.float32)
    with torch.autocast(k.device.type, enabled=False):
        logits = latent_logits(q.to(dtype), k.to(dtype), scale)  # [B, H, M, n]
        enc = mask_keys(logits, mask)
        if enc.shape[-1] > 0:
            local_max = enc.detach().amax(dim=-1)  # [B, H, M]; -inf without real points
        else:
            local_max = enc.new_full(enc.shape[:-1], float("-inf"))
        mx = all_reduce_max(local_max, group)  # a constant shift: it cancels out of z
        l, acc = encode_sums(enc, v.to(dtype), mx)
        packed = all_reduce_sum(torch.cat([l[..., None], acc], dim=-1), group)  # [B, H, M, D+1]
        total = packed[..., :1]
        z = packed[..., 1:] / torch.where(total > 0, total, 1.0)  # [B, H, M, D]
        return decode(logits, z)  # [B, H, n, D]


class _FlareMixTritonContext(torch.autograd.Function):
    """The Triton mixer with the encode joined across the group in forward and the
    latents' gradient summed across it in backward."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, cfg, group):
        from flare_lightning.kernels.triton_mixer import _flare_forward

        def merge(z, lse):
            return merge_latents_lse2(z, lse, group)

        y, z, z_lo, lse_enc, lse_dec = _flare_forward(q, k, v, mask, scale, cfg, merge=merge)
        ctx.save_for_backward(q, k, v, mask, y, z, z_lo, lse_enc, lse_dec)
        ctx.scale, ctx.cfg, ctx.group = scale, cfg, group
        return y

    @staticmethod
    def backward(ctx, dy):
        from flare_lightning.kernels.triton_mixer import _flare_backward, _unit_last

        q, k, v, mask, y, z, z_lo, lse_enc, lse_dec = ctx.saved_tensors

        def reduce_dz(dz):
            return all_reduce_sum(dz, ctx.group)

        dq, dk, dv = _flare_backward(
            q, k, v, mask, y, z, z_lo, lse_enc, lse_dec, _unit_last(dy), ctx.scale, ctx.cfg, reduce_dz=reduce_dz
        )
        return dq, dk, dv, None, None, None, None


def context_mix_triton(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, group, config=None) -> Tensor:
    """``context_mix_torch`` on the fused Triton kernels; q, k, v share one dtype
    (float32, bfloat16 or float16), as for ``flare_mix_triton``."""
    from flare_lightning.kernels.triton_mixer import _unit_last, default_config

    if k.shape[2] == 0:
        raise ValueError("context_mix_triton: a rank's share holds no points; pad shares to a common length")
    cfg = config or default_config(q.shape[1], q.shape[2], k.dtype)
    if mask is not None:
        mask = mask.contiguous()
    scale = float(scale)
    if scale <= 0.0:  # as flare_mix_triton: the kernels need a positive scale
        q, scale = (-q, -scale) if scale < 0.0 else (q * 0.0, 1.0)
    return _FlareMixTritonContext.apply(q.contiguous(), _unit_last(k), _unit_last(v), mask, scale, cfg, group)


@torch.compiler.disable  # collectives and hand-written kernels: not for Inductor
def context_mix(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, backend: str, group) -> Tensor:
    """Context-parallel ``flare_mix``: Triton kernels where ``backend`` resolves to them,
    else the PyTorch path. Returns y [B, H, n, D] in the mixer's compute dtype."""
    check_mixer_inputs(q, k, v, mask)
    dtype = mixer_dtype(k)
    if resolve_backend(backend, k) == "triton":
        return context_mix_triton(q.to(dtype), k.to(dtype), v.to(dtype), mask, scale, group)
    return context_mix_torch(q, k, v, mask, scale, group).to(dtype)
