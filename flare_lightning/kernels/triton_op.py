"""The fused Triton mixer as ``torch.library`` custom ops.

``torch.compile`` traces a whole FLARE block through ``flare_lightning::mixer_fwd`` (no
graph break): Inductor leaves the hand-written kernels alone and takes output shapes from
the fake implementations; ``mixer_bwd`` is the registered backward. ``encode_eval`` and
``decode_eval`` are the chunked evaluation's halves (no autograd): without them a compiled
evaluation would hand the kernels to Inductor, which recompiles them with its own scalar
types and launch options. All run the default tiles (``triton_mixer.launch_config``:
``default_config`` unless a benchmark overrides it). The kernels are looked up at call time, so
reloading ``triton_mixer`` (tests switch to Triton's interpreter) does not need the ops registered twice.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor


def _kernels():
    from flare_lightning.kernels import triton_mixer  # noqa: F401  (imported once, maybe reloaded)

    return sys.modules["flare_lightning.kernels.triton_mixer"]


@torch.library.custom_op("flare_lightning::mixer_fwd", mutates_args=())
def mixer_fwd(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, z, z_lo, lse_enc, lse_dec) of ``_flare_forward`` with the default tiles."""
    tm = _kernels()
    return tm._flare_forward(q, k, v, mask, scale, tm.launch_config(q.shape[1], q.shape[2], k.dtype))


@mixer_fwd.register_fake
def _(q, k, v, mask, scale):
    b, h, n, d = k.shape
    m = q.shape[1]
    f32 = torch.float32
    return (
        torch.empty_like(v),
        k.new_empty(b * h, m, d, dtype=f32),
        k.new_empty(b * h, m, d),
        k.new_empty(b * h, m, dtype=f32),
        k.new_empty(b * h, n, dtype=f32),
    )


@torch.library.custom_op("flare_lightning::mixer_bwd", mutates_args=())
def mixer_bwd(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, y: Tensor, z: Tensor, z_lo: Tensor,
    lse_enc: Tensor, lse_dec: Tensor, dy: Tensor, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of ``_flare_backward`` with the default tiles."""
    tm = _kernels()
    cfg = tm.launch_config(q.shape[1], q.shape[2], k.dtype)
    return tm._flare_backward(q, k, v, mask, y, z, z_lo, lse_enc, lse_dec, tm._unit_last(dy), scale, cfg)


@mixer_bwd.register_fake
def _(q, k, v, mask, y, z, z_lo, lse_enc, lse_dec, dy, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _mixer_setup_context(ctx, inputs, output) -> None:
    q, k, v, mask, scale = inputs
    y, z, z_lo, lse_enc, lse_dec = output
    ctx.save_for_backward(q, k, v, mask, y, z, z_lo, lse_enc, lse_dec)
    ctx.scale = scale


def _mixer_backward(ctx, dy, *unused):
    q, k, v, mask, y, z, z_lo, lse_enc, lse_dec = ctx.saved_tensors
    dq, dk, dv = mixer_bwd(q, k, v, mask, y, z, z_lo, lse_enc, lse_dec, dy, ctx.scale)
    return dq, dk, dv, None, None


mixer_fwd.register_autograd(_mixer_backward, setup_context=_mixer_setup_context)


@torch.library.custom_op("flare_lightning::encode_eval", mutates_args=())
def encode_eval(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
    """(z [B·H, M, D], lse [B·H, M]), both fp32, of ``triton_mixer._encode`` with the default tiles."""
    tm = _kernels()
    z, _, lse = tm._encode(q, k, v, mask, scale, tm.launch_config(q.shape[1], q.shape[2], k.dtype))
    return z, lse


@encode_eval.register_fake
def _(q, k, v, mask, scale):
    bh, m, d = k.shape[0] * k.shape[1], q.shape[1], q.shape[2]
    return k.new_empty(bh, m, d, dtype=torch.float32), k.new_empty(bh, m, dtype=torch.float32)


@torch.library.custom_op("flare_lightning::decode_eval", mutates_args=())
def decode_eval(q: Tensor, z_lo: Tensor, k: Tensor, scale: float) -> Tensor:
    """y [B, H, N, D] in k's dtype and layout of ``triton_mixer._decode`` (z_lo [B·H, M, D] in k's dtype)."""
    tm = _kernels()
    return tm._decode(q, z_lo, k, scale, tm.launch_config(q.shape[1], q.shape[2], k.dtype), like=k)[0]


@decode_eval.register_fake
def _(q, z_lo, k, scale):
    return torch.empty_like(k)


__all__ = ["decode_eval", "encode_eval", "mixer_bwd", "mixer_fwd"]
