"""The fused residual MLP on Triton: launches, ``torch.library`` custom ops and autograd.

``fused_mlp_triton(x, weight, bias, ...)`` computes ``[residual +] mlp(layer_norm(x))`` for FLARE's
C -> C residual MLPs (``ResidualMLP`` with both residuals): one forward pass over the rows, and
a backward that recomputes the chain on chip, either in one kernel per layer segment summing the
weight gradients in registers, or (``MLPConfig.split``) as a row pass over all layers that writes
each layer's d a and input, then a split-K GEMM of the weight gradients. What autograd keeps is
the input x (plus the weights); with ``store_hidden`` also the inputs of the layers after the
first (L - 1 [N, C] tensors in the dot dtype), so the backward recomputes nothing: more memory,
fewer dots. The ops are opaque to ``torch.compile`` (Inductor traces around them, as for the mixer).

Importing this module needs Triton; ``fused_mlp`` imports it on demand.
Under ``TRITON_INTERPRET=1`` (set before this import) the kernels run on CPU tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from flare_lightning.kernels import triton_mlp_kernels as kernels
from flare_lightning.kernels.dot_precision import dot_type, input_precision
from flare_lightning.kernels.fused_mlp import FUSED_WIDTHS

ACT_CODES = {"gelu_tanh": kernels.GELU_TANH, "gelu": kernels.GELU, "silu": kernels.SILU, "relu": kernels.RELU}


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (looked up at call time: tests reload
    ``triton_mlp_kernels`` under ``TRITON_INTERPRET=1``; the custom ops stay registered once)."""
    return type(kernels.mlp_fwd_kernel).__name__ == "InterpretedFunction"
_DOT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@dataclass(frozen=True)
class MLPConfig:
    """Launch configuration: rows per tile, warps and register cap of each kernel, backward
    programs per SM, and the backward's layer segments (each a kernel that keeps only its own
    layers' inputs and weight-gradient sums on chip; more segments: fewer registers, more
    passes). A register cap lets more programs share an SM: the layer chain is a serial
    dependency, so an SM hides its latency only across programs. The ``stored_*`` fields
    launch the backward when the forward kept the layers' inputs (``store_hidden``): no chain
    to recompute, so its segments are cheap and its kernels light. ``split`` runs the backward
    as two kernels instead: a row pass over all layers that writes each layer's d a and input
    (no weight-gradient sums held on chip, so many tiles share an SM; ``split_*``), then a
    split-K GEMM of the weight gradients over those (``dw_*``): more memory traffic, fewer stalls."""

    fwd_rows: int = 128
    fwd_warps: int = 8
    bwd_rows: int = 128
    bwd_warps: int = 8
    max_layers_per_segment: int = 3
    fwd_maxnreg: int | None = None
    bwd_maxnreg: int | None = None
    bwd_programs_per_sm: int = 1
    stored_rows: int = 64
    stored_warps: int = 4
    stored_layers_per_segment: int = 1
    stored_programs_per_sm: int = 2  # the uncapped kernel needs 188-255 registers (sm_90): two programs fit an SM
    stored_maxnreg: int | None = None
    split: bool = False
    split_rows: int = 64
    split_warps: int = 4
    split_maxnreg: int | None = None
    dw_rows: int = 128
    dw_warps: int = 4
    dw_stages: int = 3
    dw_programs_per_sm: int = 2

    def segments(self, num_layers: int, stored: bool = False) -> list[tuple[int, int]]:
        """(lo, hi) layer ranges from the last layers back to the first."""
        per = self.stored_layers_per_segment if stored else self.max_layers_per_segment
        n = -(-num_layers // per)
        bounds = [round(num_layers * i / n) for i in range(n + 1)]
        return [(bounds[i], bounds[i + 1]) for i in reversed(range(n))]

    def launch(self, which: str) -> dict:
        """Keyword arguments of a Triton launch of the ``fwd``, ``bwd`` or ``stored`` (backward
        from kept inputs) kernel."""
        warps, cap = {"fwd": (self.fwd_warps, self.fwd_maxnreg), "bwd": (self.bwd_warps, self.bwd_maxnreg),
                      "stored": (self.stored_warps, self.stored_maxnreg), "split": (self.split_warps, self.split_maxnreg),
                      "dw": (self.dw_warps, None)}[which]
        # no loop pipelining in the layer-chain kernels (its buffers overflow shared memory); the
        # weight-gradient GEMM is a plain loop over rows that pipelining keeps fed
        opts = {"num_warps": warps, "num_stages": self.dw_stages if which == "dw" else 1}
        if cap is not None and not interpreted():
            opts["maxnreg"] = cap
        return opts

    def backward(self, stored: bool) -> tuple[int, int, str]:
        """(rows per tile, programs per SM, launch name) of the backward kernels."""
        if stored:
            return self.stored_rows, self.stored_programs_per_sm, "stored"
        return self.bwd_rows, self.bwd_programs_per_sm, "bwd"


def default_config(c: int) -> MLPConfig:
    """The fastest configuration of ``benchmarks/mlp.py --sweep`` at C = 64 (RESULTS.md, "The fused
    residual MLP"): 64-row forward tiles of one warpgroup under a register cap, and the split
    backward (at 2^20 rows on an H100: 2.95 against 3.27 ms forward+backward from kept inputs,
    3.49 against 4.83 ms recomputing); the one-kernel backward's launch fields (segments of two
    layers, three programs an SM) stay its best. Small tiles in the interpreter (numpy runs whole
    tiles); one-layer segments above C = 64 (registers grow with C)."""
    if interpreted():
        return MLPConfig(32, 4, 32, 4, 2, stored_rows=32, split=True, split_rows=32, dw_rows=32)
    if c > 64:
        return MLPConfig(64, 4, 64, 4, 1, 128, 168, 3, split=True)
    return MLPConfig(64, 4, 64, 4, 2, 128, 168, 3, split=True)


CONFIG_OVERRIDE: MLPConfig | None = None  # benchmarks/mlp.py sweeps launch configurations through it
# A residual that is the MLP's own input (the feed-forward's x + mlp(LN x)): its gradient added to dx in the
# backward kernel, not by autograd in another pass over [N, C]. Opt-in until train_step_small times it (-fused rows).
FOLD_RESIDUAL = False
# The split backward recomputes layer 0's input LN(x) from x where its two kernels need it instead of the row
# pass writing it for the weight GEMM ([N, C] in the dot dtype a call). Opt-in until timed (rows -h0, -all).
RECOMPUTE_H0 = False
# From kept layer inputs the row pass holds 168 registers on sm_90 (three programs an SM); recomputing LN(x) or
# writing the folded projection's d y lifts it to 177-178 (two). Capped at 160 it keeps three, spilling 0 and 16
# bytes (benchmarks/kernel_resources.py --mlp); recomputing the layer inputs it needs ~239 either way.
EXTRA_ROW_PASS_MAXNREG = 160


def row_pass_launch(cfg: MLPConfig, stored: bool, extra: bool) -> dict:
    """Launch options of the split backward's row pass; ``extra``: it also recomputes LN(x) or writes d y."""
    opts = cfg.launch("split")
    if stored and extra and cfg.split_maxnreg is None and not interpreted():
        opts["maxnreg"] = EXTRA_ROW_PASS_MAXNREG
    return opts


def _config(c: int) -> MLPConfig:
    return CONFIG_OVERRIDE if CONFIG_OVERRIDE is not None else default_config(c)


def _sms(device: torch.device) -> int | None:
    """The SM count of a CUDA device; None elsewhere (the interpreter)."""
    if device.type != "cuda":
        return None
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _programs(rows: int, block: int, per_sm: int, device: torch.device) -> int:
    """Programs of a persistent launch: ``per_sm`` on each SM, no more than there are tiles."""
    tiles = -(-rows // block)
    sms = _sms(device)
    return max(1, min(tiles, 4 if sms is None else per_sm * sms))


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1]).contiguous()


def _dot_weights(weight: Tensor, compute_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The weights [L, C, C] (out, in) and their transposes [L, in, out] in the dot dtype, as the kernels read them."""
    return weight.to(compute_dtype).contiguous(), weight.transpose(1, 2).to(compute_dtype).contiguous()


def compute_dtype_of(x: Tensor, name: str) -> torch.dtype:
    """The dtype the fused kernels' dots run in for x: autocast's on x's device, else x's own."""
    device = x.device.type
    compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    if compute not in _DOT:
        raise TypeError(f"{name}: compute dtype must be float32, bfloat16 or float16, got {compute}")
    return compute


def _hidden_shape(x: Tensor, nl: int, save: bool) -> tuple[int, ...]:
    return (nl - 1, x.numel() // x.shape[-1], x.shape[-1]) if save else (0,)


@torch.library.custom_op("flare_lightning::mlp_fwd", mutates_args=())
def mlp_fwd(
    x: Tensor, weight: Tensor, bias: Tensor, ln_weight: Tensor | None, ln_bias: Tensor | None,
    residual: Tensor | None, eps: float, act: int, compute_dtype: torch.dtype, out_dtype: torch.dtype,
    save: bool, fold_residual: bool = False,
) -> tuple[Tensor, Tensor]:
    """(``[residual +] mlp(layer_norm(x))``, the layers' inputs for backward [L-1, N, C] when
    ``save``, else an empty tensor) for x [..., C]; weight [L, C, C], bias [L, C]. ``fold_residual``:
    the residual is x itself, and the backward returns dx with the residual's gradient in it."""
    c, nl = x.shape[-1], weight.shape[0]
    x2 = _flat(x)
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    hidden = torch.empty(_hidden_shape(x, nl, save), device=x.device, dtype=compute_dtype)
    cfg = _config(c)
    rows = x2.shape[0]
    has_ln = ln_weight is not None
    res = _flat(residual) if residual is not None else x2
    if rows:
        kernels.mlp_fwd_kernel[(-(-rows // cfg.fwd_rows),)](
            x2, res, out, hidden, ln_weight if has_ln else bias, ln_bias if has_ln else bias,
            _dot_weights(weight, compute_dtype)[1], bias.contiguous(), rows, eps,
            C=c, NL=nl, LN=has_ln, RES=residual is not None, ACT=act, SAVE=save and nl > 1,
            DOT=dot_type(compute_dtype), PREC=input_precision(compute_dtype), BT=cfg.fwd_rows, **cfg.launch("fwd"),
        )
    return out, hidden


@mlp_fwd.register_fake
def _(x, weight, bias, ln_weight, ln_bias, residual, eps, act, compute_dtype, out_dtype, save, fold_residual=False):
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(_hidden_shape(x, weight.shape[0], save), dtype=compute_dtype)


@torch.library.custom_op("flare_lightning::mlp_bwd", mutates_args=())
def mlp_bwd(
    x: Tensor, dout: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor, ln_weight: Tensor | None,
    ln_bias: Tensor | None, eps: float, act: int, compute_dtype: torch.dtype, add_dout: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias, d(ln_weight, ln_bias) [2, C]) of ``mlp_fwd`` (fp32 parameter grads);
    from the saved layer inputs ``hidden`` when the forward kept them, else recomputing. ``add_dout``:
    dx includes ``dout`` (a residual that is x itself)."""
    c, nl = x.shape[-1], weight.shape[0]
    x2, grad = _flat(x), _flat(dout)
    rows = x2.shape[0]
    cfg = _config(c)
    stored = hidden.dim() == 3  # [L-1, N, C] (empty for one layer) when the forward kept the inputs
    has_ln = ln_weight is not None
    lnw, lnb = (ln_weight, ln_bias) if has_ln else (bias, bias)  # any pointer when there is no norm
    w, wt = _dot_weights(weight, compute_dtype)
    if cfg.split:
        return _backward_split(x, x2, grad, hidden if stored else None, w, wt, bias, (lnw, lnb, has_ln), eps, act,
                               compute_dtype, cfg, add_dout=add_dout)[:4]
    block, per_sm, launch = cfg.backward(stored)
    programs = _programs(rows, block, per_sm, x.device)
    f32 = torch.float32
    dw = torch.zeros(programs, nl, c, c, device=x.device, dtype=f32)
    db = torch.zeros(programs, nl, c, device=x.device, dtype=f32)
    dln = torch.zeros(programs, 2, c, device=x.device, dtype=f32)
    for lo, hi in cfg.segments(nl, stored):  # the last layers first; each passes d h_lo to the next
        target = torch.empty(x.shape, device=x.device, dtype=x.dtype if lo == 0 else f32)
        if rows:
            kernels.mlp_bwd_kernel[(programs,)](
                x2, hidden if hidden.numel() else x2, grad, target, lnw, lnb, w, wt, bias.contiguous(), dw, db, dln,
                rows, eps, C=c, NL=nl, LO=lo, HI=hi, LN=has_ln, STORED=stored, ACT=act,
                DOT=dot_type(compute_dtype), PREC=input_precision(compute_dtype), BT=block, **cfg.launch(launch),
            )
        grad = target.view(-1, c)
    if add_dout:
        target = target + dout.to(target.dtype)
    return target, dw.sum(0), db.sum(0), dln.sum(0)


def _slices(rows: int, nl: int, cfg: MLPConfig, device: torch.device) -> tuple[int, int]:
    """(row slices, rows per slice) of the weight-gradient GEMM: about ``dw_programs_per_sm``
    programs an SM over all ``nl`` layers, each slice whole ``dw_rows`` tiles."""
    sms = _sms(device)
    target = cfg.dw_programs_per_sm * (2 if sms is None else sms)
    tiles = -(-rows // cfg.dw_rows)
    per_slice = -(-tiles // max(1, min(tiles, target // nl)))
    return -(-tiles // per_slice), per_slice * cfg.dw_rows


def _backward_split(x: Tensor, x2: Tensor, grad: Tensor, hidden: Tensor | None, w: Tensor, wt: Tensor, bias: Tensor,
                    ln: tuple[Tensor, Tensor, bool], eps: float, act: int, compute_dtype: torch.dtype,
                    cfg: MLPConfig, dx: Tensor | None = None, h0: Tensor | None = None, add_dout: bool = False,
                    pre: tuple[Tensor, Tensor, Tensor] | None = None,
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """``mlp_bwd`` as a row pass writing every layer's d a and input, then the weight-gradient GEMM
    over them. ``w``/``wt``: the weights [L, C, C] and their transposes in the dot dtype; ``ln``: the
    LayerNorm's weight and bias pointers and whether there is one; ``hidden``: what the forward kept
    (None: the row pass recomputes and writes it). A second MLP of the same x and LayerNorm passes
    the first's ``dx`` (its own is added in) and ``h0`` (LN(x) as the first wrote it: not again);
    ``add_dout`` adds the output's gradient to dx (a residual that is x itself). ``pre``: (y, P, dy)
    of a projection of y that made x (``triton_mlp_proj``: x = x0 + y Pᵀ + p_b): dx P is written to dy
    and dW, db carry P's and p_b's gradients as a last layer.
    Returns (dx, dW, db, d(LN weight, bias), h0)."""
    c, nl = x.shape[-1], w.shape[0]
    nw = nl + (pre is not None)  # weight-gradient slots
    rows, device, f32 = x2.shape[0], x.device, torch.float32
    acc_dx, store_h0 = dx is not None, h0 is None and not RECOMPUTE_H0
    if dx is None:
        dx = torch.empty(x.shape, device=device, dtype=x.dtype)
    if not rows:
        return dx, x.new_zeros(nw, c, c, dtype=f32), x.new_zeros(nw, c, dtype=f32), x.new_zeros(2, c, dtype=f32), h0
    y2, p, dy = pre if pre is not None else (None,) * 3
    stored = hidden is not None and hidden.numel() > 0
    if not stored:  # the row pass writes the layers' inputs here
        hidden = torch.empty((nl - 1, rows, c) if nl > 1 else (0,), device=device, dtype=compute_dtype)
    da_last = grad.dtype != compute_dtype  # else the last layer's d a is the gradient as it is: not written again
    da = torch.empty(nl - (not da_last), rows, c, device=device, dtype=compute_dtype)
    if store_h0:
        h0 = torch.empty(rows, c, device=device, dtype=compute_dtype)
    tiles = -(-rows // cfg.split_rows)
    lnw, lnb, has_ln = ln
    dln = torch.zeros(tiles if has_ln else 1, 2, c, device=device, dtype=f32)
    dot, prec = dot_type(compute_dtype), input_precision(compute_dtype)
    recompute = h0 is None and RECOMPUTE_H0  # no one wrote LN(x): both kernels recompute it from x
    da_arg = da if da.numel() else grad  # one layer, read from grad (then in the dot dtype): any such pointer
    h0_arg = da_arg if recompute else h0
    kernels.mlp_bwd_da_kernel[(tiles,)](
        x2, hidden, h0_arg, grad, dx, da_arg, lnw, lnb, w, wt, bias.contiguous(), dln, rows, eps,
        C=c, NL=nl, LN=has_ln, STORED=stored, ACT=act, DOT=dot, PREC=prec, BT=cfg.split_rows, DA_LAST=da_last,
        STORE_H0=store_h0, ACC_DX=acc_dx, ADD_DOUT=add_dout, p_ptr=p, dy_ptr=dy, PRE=pre is not None,
        H0_FROM_X=recompute, **row_pass_launch(cfg, stored, recompute or pre is not None),
    )
    slices, per_slice = _slices(rows, nw, cfg, device)
    dw = torch.empty(slices, nw, c, c, device=device, dtype=f32)
    db = torch.empty(slices, nw, c, device=device, dtype=f32)
    args = (da_arg, grad if not da_last else da_arg, h0_arg, hidden, dw, db, rows, per_slice, x2, lnw, lnb, eps)
    consts = dict(C=c, NL=nl, PREC=prec, BT=cfg.dw_rows, DA_LAST=da_last, dx_ptr=dx if pre is not None else None,
                  y_ptr=y2, PRE=pre is not None, LN=has_ln, **cfg.launch("dw"))
    if recompute:  # layer 0 (its input from x) apart from the rest
        kernels.mlp_dw_kernel[(slices, 1)](*args, FIRST=0, H0_FROM_X=True, **consts)
    if nw > recompute:
        kernels.mlp_dw_kernel[(slices, nw - recompute)](*args, FIRST=int(recompute), **consts)
    return dx, dw.sum(0), db.sum(0), dln.sum(0), h0


@mlp_bwd.register_fake
def _(x, dout, hidden, weight, bias, ln_weight, ln_bias, eps, act, compute_dtype, add_dout=False):
    c, nl = x.shape[-1], weight.shape[0]
    f32 = torch.float32
    return (x.new_empty(x.shape), x.new_empty(nl, c, c, dtype=f32), x.new_empty(nl, c, dtype=f32),
            x.new_empty(2, c, dtype=f32))


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, ln_weight, ln_bias, residual, eps, act, compute_dtype, out_dtype, save, *fold = inputs
    ctx.save_for_backward(x, output[1], weight, bias, ln_weight, ln_bias)
    ctx.mark_non_differentiable(output[1])
    ctx.eps, ctx.act, ctx.compute_dtype = eps, act, compute_dtype
    ctx.fold = bool(fold and fold[0])  # the residual is x: its gradient goes into dx, in the kernel
    ctx.residual_dtype = residual.dtype if residual is not None and not ctx.fold else None


def _backward(ctx, dout, _):
    x, hidden, weight, bias, ln_weight, ln_bias = ctx.saved_tensors
    dx, dw, db, dln = mlp_bwd(x, dout, hidden, weight, bias, ln_weight, ln_bias, ctx.eps, ctx.act, ctx.compute_dtype,
                              ctx.fold)
    has_ln = ln_weight is not None
    return (
        dx, dw.to(weight.dtype), db.to(bias.dtype),
        dln[0].to(ln_weight.dtype) if has_ln else None, dln[1].to(ln_bias.dtype) if has_ln else None,
        dout.to(ctx.residual_dtype) if ctx.residual_dtype is not None else None, None, None, None, None, None, None,
    )


mlp_fwd.register_autograd(_backward, setup_context=_setup_context)


def check_fused_inputs(x: Tensor, weight: Tensor, bias: Tensor, ln: tuple | None, act: str) -> None:
    """Refuse what the kernels do not compute, naming the argument."""
    c = x.shape[-1]
    if c not in FUSED_WIDTHS:
        raise ValueError(f"fused_mlp: the width must be one of {FUSED_WIDTHS}, got {c}")
    if weight.dim() != 3 or weight.shape[1:] != (c, c) or bias.shape != (weight.shape[0], c):
        raise ValueError(f"fused_mlp: weight must be [L, {c}, {c}] and bias [L, {c}], got "
                         f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    if weight.shape[0] < 1:
        raise ValueError("fused_mlp: needs at least one layer")
    if act not in ACT_CODES:
        raise ValueError(f"fused_mlp: act must be one of {sorted(ACT_CODES)}, got {act!r}")
    if ln is not None and (ln[0].shape != (c,) or ln[1].shape != (c,)):
        raise ValueError(f"fused_mlp: the LayerNorm must have weight and bias of shape ({c},)")
    if not (x.is_cuda or interpreted()):
        raise RuntimeError("fused_mlp needs CUDA tensors (or TRITON_INTERPRET=1 set before import)")


def fused_mlp_triton(x: Tensor, weight: Tensor, bias: Tensor, ln: tuple | None, residual: Tensor | None, act: str,
                     out_dtype: torch.dtype | None, store_hidden: bool = False) -> Tensor:
    """``fused_mlp.fused_mlp`` on the Triton kernels (its docstring says what each argument is)."""
    check_fused_inputs(x, weight, bias, ln, act)
    device = x.device.type
    compute = compute_dtype_of(x, "fused_mlp")
    if out_dtype is None:
        out_dtype = torch.promote_types(x.dtype, residual.dtype) if residual is not None else x.dtype
    ln_w, ln_b, eps = ln if ln is not None else (None, None, 0.0)
    inputs = (x, weight, bias, ln_w, ln_b, residual)
    save = store_hidden and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in inputs)
    fold = FOLD_RESIDUAL and residual is x  # the feed-forward's x + mlp(LN x)
    with torch.autocast(device, enabled=False):
        return mlp_fwd(*inputs, float(eps), ACT_CODES[act], compute, out_dtype, save, fold)[0]


__all__ = ["ACT_CODES", "MLPConfig", "check_fused_inputs", "default_config", "fused_mlp_triton", "mlp_bwd", "mlp_fwd"]
