"""A block's attention output projection and residual add folded into its feed-forward MLP.

Apart, ``x1 = x + out_proj(y)`` is a GEMM that writes its output and a pass that reads it and x
to write x1, which the feed-forward MLP reads again; the backward has a GEMM for d y. Here the
MLP's forward kernel reads x and y, computes x1 = x + y Pᵀ + p_b on chip and writes it once (the
backward's input) beside ``out = x1 + mlp(LN(x1))``; the backward's row pass writes dx (the
stream's gradient) and d y = dx P from registers, and the weight-gradient GEMM sums P's gradient
as one more layer. Opt-in (``FOLD_PROJECTION``) until timed in the whole step
(``benchmarks/train_step_small.py`` rows ``-proj``); the split backward only (``MLPConfig.split``),
x, y and the dots in one dtype; elsewhere the block runs the two apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flare_lightning.kernels import triton_mlp_kernels as kernels
from flare_lightning.kernels.dot_precision import dot_type, input_precision
from flare_lightning.kernels.triton_mlp import (
    ACT_CODES, _backward_split, _config, _dot_weights, _flat, _hidden_shape, check_fused_inputs, compute_dtype_of,
)

FOLD_PROJECTION = False  # the model's blocks through this op (benchmarks turn it on to time it)


@torch.library.custom_op("flare_lightning::mlp_proj_fwd", mutates_args=())
def mlp_proj_fwd(
    x: Tensor, y: Tensor, proj_weight: Tensor, proj_bias: Tensor, weight: Tensor, bias: Tensor,
    ln_weight: Tensor, ln_bias: Tensor, eps: float, act: int, compute_dtype: torch.dtype, save: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(x1 + mlp(LN(x1)), x1 = x + y Pᵀ + p_b in x's dtype, the layers' inputs for backward as
    ``mlp_fwd`` keeps them) for x, y [..., C]; P [C, C] (out, in), p_b [C]; weight [L, C, C], bias [L, C]."""
    c, nl = x.shape[-1], weight.shape[0]
    x2, y2 = _flat(x), _flat(y)
    out, x1 = torch.empty_like(x2).view(x.shape), torch.empty_like(x2)
    hidden = torch.empty(_hidden_shape(x, nl, save), device=x.device, dtype=compute_dtype)
    cfg, rows = _config(c), x2.shape[0]
    if rows:
        pt = proj_weight.t().to(compute_dtype).contiguous()
        kernels.mlp_fwd_kernel[(-(-rows // cfg.fwd_rows),)](
            x2, x1, out, hidden, ln_weight, ln_bias, _dot_weights(weight, compute_dtype)[1], bias.contiguous(), rows,
            eps, C=c, NL=nl, LN=True, RES=True, ACT=act, SAVE=save and nl > 1, DOT=dot_type(compute_dtype),
            PREC=input_precision(compute_dtype), BT=cfg.fwd_rows, y_ptr=y2, pt_ptr=pt, pb_ptr=proj_bias.contiguous(),
            PRE=True, **cfg.launch("fwd"),
        )
    return out, x1.view(x.shape), hidden


@mlp_proj_fwd.register_fake
def _(x, y, proj_weight, proj_bias, weight, bias, ln_weight, ln_bias, eps, act, compute_dtype, save):
    return (x.new_empty(x.shape), x.new_empty(x.shape),
            x.new_empty(_hidden_shape(x, weight.shape[0], save), dtype=compute_dtype))


@torch.library.custom_op("flare_lightning::mlp_proj_bwd", mutates_args=())
def mlp_proj_bwd(
    x1: Tensor, y: Tensor, dout: Tensor, hidden: Tensor, proj_weight: Tensor, weight: Tensor, bias: Tensor,
    ln_weight: Tensor, ln_bias: Tensor, eps: float, act: int, compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dy, dP, dp_b, dW, db, d(LN weight, bias) [2, C]) of ``mlp_proj_fwd`` (fp32 parameter
    grads) from the x1 it wrote."""
    kept = hidden if hidden.dim() == 3 else None  # [L-1, N, C] when the forward kept the layer inputs
    cfg = _config(x1.shape[-1])
    w, wt = _dot_weights(weight, compute_dtype)
    dy = torch.empty(y.shape, device=y.device, dtype=y.dtype)
    pre = (_flat(y), proj_weight.to(compute_dtype).contiguous(), dy)
    dx, dw, db, dln, _ = _backward_split(x1, _flat(x1), _flat(dout), kept, w, wt, bias, (ln_weight, ln_bias, True),
                                         eps, act, compute_dtype, cfg, add_dout=True, pre=pre)
    nl = weight.shape[0]
    return dx, dy, dw[nl].clone(), db[nl].clone(), dw[:nl], db[:nl], dln  # outputs may not alias each other


@mlp_proj_bwd.register_fake
def _(x1, y, dout, hidden, proj_weight, weight, bias, ln_weight, ln_bias, eps, act, compute_dtype):
    f32, c = torch.float32, x1.shape[-1]
    return (x1.new_empty(x1.shape), y.new_empty(y.shape), x1.new_empty(c, c, dtype=f32), x1.new_empty(c, dtype=f32),
            x1.new_empty(weight.shape, dtype=f32), x1.new_empty(bias.shape, dtype=f32), x1.new_empty(2, c, dtype=f32))


def _setup_context(ctx, inputs, output) -> None:
    x, y, proj_weight, proj_bias, weight, bias, ln_weight, ln_bias, eps, act, compute_dtype, save = inputs
    ctx.save_for_backward(output[1], y, output[2], proj_weight, proj_bias, weight, bias, ln_weight, ln_bias)
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.eps, ctx.act, ctx.compute_dtype = eps, act, compute_dtype


def _backward(ctx, dout, _x1, _hidden):
    x1, y, hidden, proj_weight, proj_bias, weight, bias, ln_weight, ln_bias = ctx.saved_tensors
    dx, dy, dp, dpb, dw, db, dln = mlp_proj_bwd(x1, y, dout, hidden, proj_weight, weight, bias, ln_weight, ln_bias,
                                                ctx.eps, ctx.act, ctx.compute_dtype)
    return (dx, dy, dp.to(proj_weight.dtype), dpb.to(proj_bias.dtype), dw.to(weight.dtype), db.to(bias.dtype),
            dln[0].to(ln_weight.dtype), dln[1].to(ln_bias.dtype), None, None, None, None)


mlp_proj_fwd.register_autograd(_backward, setup_context=_setup_context)


def foldable(x: Tensor, y: Tensor) -> bool:
    """Whether ``fused_mlp_proj_triton`` runs for this stream x and mixer output y: the split backward,
    and x, y and the dots in one dtype (the kernels read x's gradient as a dot operand)."""
    return _config(x.shape[-1]).split and x.dtype == y.dtype == compute_dtype_of(x, "fused_mlp_proj")


def fused_mlp_proj_triton(x: Tensor, y: Tensor, proj: tuple[Tensor, Tensor], mlp: tuple[Tensor, Tensor],
                          ln: tuple[Tensor, Tensor, float], act: str, store_hidden: bool = False) -> Tensor:
    """``x1 + mlp(LN(x1))`` with ``x1 = x + y Pᵀ + p_b``: ``proj`` = (P [C, C] (out, in), p_b [C]),
    ``mlp`` = (weight [L, C, C], bias [L, C]); in x's dtype (``foldable`` must hold)."""
    weight, bias = mlp
    check_fused_inputs(x, weight, bias, ln, act)
    proj_weight, proj_bias = proj
    c = x.shape[-1]
    if y.shape != x.shape or proj_weight.shape != (c, c) or proj_bias.shape != (c,):
        raise ValueError(f"fused_mlp_proj: y must be shaped as x {tuple(x.shape)}, the projection [{c}, {c}] and [{c}], "
                         f"got {tuple(y.shape)}, {tuple(proj_weight.shape)} and {tuple(proj_bias.shape)}")
    if not foldable(x, y):
        raise ValueError("fused_mlp_proj: needs the split backward and x, y and the dots in one dtype (foldable)")
    compute = compute_dtype_of(x, "fused_mlp_proj")
    ln_w, ln_b, eps = ln
    inputs = (x, y, proj_weight, proj_bias, weight, bias, ln_w, ln_b)
    save = store_hidden and torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    with torch.autocast(x.device.type, enabled=False):
        return mlp_proj_fwd(*inputs, float(eps), ACT_CODES[act], compute, save)[0]


__all__ = ["FOLD_PROJECTION", "foldable", "fused_mlp_proj_triton", "mlp_proj_bwd", "mlp_proj_fwd"]
