"""A block's key and value MLPs as one fused op: two chains of one input and one LayerNorm.

Run apart, each MLP's backward writes LN(x) and its own dx, and autograd adds the two dx: three
[N, C] passes that the pair does not make. Here the value MLP's row pass reads the LN(x) the key
MLP's wrote and adds its dx into the key MLP's in registers. The forward is the two MLPs' forward
kernels as they are. Opt-in (``KV_PAIR``) until timed in the whole step (``benchmarks/train_step_small.py``
row ``ours-fast-kvpair``); the split backward only (``MLPConfig.split``), else the two backwards apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flare_lightning.kernels.triton_mlp import (
    ACT_CODES, _backward_split, _config, _dot_weights, _flat, _hidden_shape, check_fused_inputs, compute_dtype_of,
    mlp_bwd, mlp_fwd,
)

KV_PAIR = False  # the model's key/value MLPs through this op (benchmarks turn it on to time it)


@torch.library.custom_op("flare_lightning::mlp_pair_fwd", mutates_args=())
def mlp_pair_fwd(
    x: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor, bias2: Tensor, ln_weight: Tensor, ln_bias: Tensor,
    eps: float, act: int, compute_dtype: torch.dtype, out_dtype: torch.dtype, save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mlp1(LN(x)), mlp2(LN(x)), and each one's layer inputs for backward as ``mlp_fwd`` keeps them)."""
    out1, hidden1 = mlp_fwd(x, weight1, bias1, ln_weight, ln_bias, None, eps, act, compute_dtype, out_dtype, save)
    out2, hidden2 = mlp_fwd(x, weight2, bias2, ln_weight, ln_bias, None, eps, act, compute_dtype, out_dtype, save)
    return out1, out2, hidden1, hidden2


@mlp_pair_fwd.register_fake
def _(x, weight1, bias1, weight2, bias2, ln_weight, ln_bias, eps, act, compute_dtype, out_dtype, save):
    def hidden(weight):
        return x.new_empty(_hidden_shape(x, weight.shape[0], save), dtype=compute_dtype)

    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(x.shape, dtype=out_dtype), hidden(weight1), hidden(weight2)


@torch.library.custom_op("flare_lightning::mlp_pair_bwd", mutates_args=())
def mlp_pair_bwd(
    x: Tensor, dout1: Tensor, dout2: Tensor, hidden1: Tensor, hidden2: Tensor, weight1: Tensor, bias1: Tensor,
    weight2: Tensor, bias2: Tensor, ln_weight: Tensor, ln_bias: Tensor, eps: float, act: int, compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dW1, db1, dW2, db2, d(LN weight, bias) [2, C]) of ``mlp_pair_fwd`` (fp32 parameter grads)."""
    cfg = _config(x.shape[-1])
    if not cfg.split:  # the one-kernel backward: the two apart, their dx added
        g1 = mlp_bwd(x, dout1, hidden1, weight1, bias1, ln_weight, ln_bias, eps, act, compute_dtype)
        g2 = mlp_bwd(x, dout2, hidden2, weight2, bias2, ln_weight, ln_bias, eps, act, compute_dtype)
        return g1[0] + g2[0], g1[1], g1[2], g2[1], g2[2], g1[3] + g2[3]
    x2, ln = _flat(x), (ln_weight, ln_bias, True)

    def backward(dout, hidden, weight, bias, dx=None, h0=None):
        w, wt = _dot_weights(weight, compute_dtype)
        kept = hidden if hidden.dim() == 3 else None  # [L-1, N, C] when the forward kept the layer inputs
        return _backward_split(x, x2, _flat(dout), kept, w, wt, bias, ln, eps, act, compute_dtype, cfg, dx, h0)

    dx, dw1, db1, dln1, h0 = backward(dout1, hidden1, weight1, bias1)
    dx, dw2, db2, dln2, _ = backward(dout2, hidden2, weight2, bias2, dx, h0)  # LN(x) read, dx added
    return dx, dw1, db1, dw2, db2, dln1 + dln2


@mlp_pair_bwd.register_fake
def _(x, dout1, dout2, hidden1, hidden2, weight1, bias1, weight2, bias2, ln_weight, ln_bias, eps, act, compute_dtype):
    f32, c = torch.float32, x.shape[-1]
    return (x.new_empty(x.shape), x.new_empty(weight1.shape, dtype=f32), x.new_empty(bias1.shape, dtype=f32),
            x.new_empty(weight2.shape, dtype=f32), x.new_empty(bias2.shape, dtype=f32), x.new_empty(2, c, dtype=f32))


def _setup_context(ctx, inputs, output) -> None:
    x, weight1, bias1, weight2, bias2, ln_weight, ln_bias, eps, act, compute_dtype, out_dtype, save = inputs
    ctx.save_for_backward(x, output[2], output[3], weight1, bias1, weight2, bias2, ln_weight, ln_bias)
    ctx.mark_non_differentiable(output[2], output[3])
    ctx.eps, ctx.act, ctx.compute_dtype = eps, act, compute_dtype


def _backward(ctx, dout1, dout2, _h1, _h2):
    x, hidden1, hidden2, weight1, bias1, weight2, bias2, ln_weight, ln_bias = ctx.saved_tensors
    dout1 = torch.zeros_like(x) if dout1 is None else dout1  # an output left unused
    dout2 = torch.zeros_like(x) if dout2 is None else dout2
    dx, dw1, db1, dw2, db2, dln = mlp_pair_bwd(x, dout1, dout2, hidden1, hidden2, weight1, bias1, weight2, bias2,
                                               ln_weight, ln_bias, ctx.eps, ctx.act, ctx.compute_dtype)
    return (dx, dw1.to(weight1.dtype), db1.to(bias1.dtype), dw2.to(weight2.dtype), db2.to(bias2.dtype),
            dln[0].to(ln_weight.dtype), dln[1].to(ln_bias.dtype), None, None, None, None, None)


mlp_pair_fwd.register_autograd(_backward, setup_context=_setup_context)


def fused_mlp_pair_triton(x: Tensor, first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor],
                          ln: tuple[Tensor, Tensor, float], act: str, out_dtype: torch.dtype | None,
                          store_hidden: bool = False) -> tuple[Tensor, Tensor]:
    """``(mlp1(LN(x)), mlp2(LN(x)))`` for two residual MLPs ``first``/``second`` = (weight [L, C, C], bias [L, C])
    of one width and activation; other arguments as ``fused_mlp.fused_mlp``."""
    for weight, bias in (first, second):
        check_fused_inputs(x, weight, bias, ln, act)
    device = x.device.type
    compute = compute_dtype_of(x, "fused_mlp_pair")
    ln_w, ln_b, eps = ln
    inputs = (x, *first, *second, ln_w, ln_b)
    save = store_hidden and torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    with torch.autocast(device, enabled=False):
        out1, out2, _, _ = mlp_pair_fwd(*inputs, float(eps), ACT_CODES[act], compute, out_dtype or x.dtype, save)
    return out1, out2


__all__ = ["KV_PAIR", "fused_mlp_pair_triton", "mlp_pair_bwd", "mlp_pair_fwd"]
