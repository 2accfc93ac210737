"""Triton kernels of the fused residual MLP: ``out = [res +] mlp(layer_norm(x))``.

FLARE's MLPs are chains of ``h = h + act(h Wᵢᵀ + bᵢ)`` at width C (64) ending in
``out = h + h Wᵀ + b``. Unfused, every Linear, activation and addition is a pass over an
[N, C] tensor; here one program takes a tile of rows, keeps the whole chain on chip and
touches memory once for its input and once for its output. The backward kernel takes the
layers' inputs either by recomputing the chain from the tile's input (nothing inside the MLP
stored) or from what the forward kept, and accumulates the weight gradients of its rows in
registers across a persistent loop, so each program writes one partial per weight. Dots run
in the compute dtype (bf16/fp16, or fp32 at ``PREC``) with fp32 accumulation; the residual
stream, LayerNorm and activations stay in fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

GELU_TANH, GELU, SILU, RELU = 0, 1, 2, 3
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
_INV_SQRT_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _act(a, ACT: tl.constexpr):
    """The activation of fp32 pre-activations ``a``."""
    if ACT == 0:  # 0.5 a (1 + tanh(u)) = a sigmoid(2u)
        u = _SQRT_2_OVER_PI * (a + 0.044715 * a * a * a)
        return a * tl.sigmoid(2.0 * u)
    elif ACT == 1:
        return 0.5 * a * (1.0 + tl.erf(a * _INV_SQRT_2))
    elif ACT == 2:
        return a * tl.sigmoid(a)
    else:
        return tl.maximum(a, 0.0)


@triton.jit
def _act_grad(a, ACT: tl.constexpr):
    """d act / d a at fp32 pre-activations ``a``."""
    if ACT == 0:
        u = _SQRT_2_OVER_PI * (a + 0.044715 * a * a * a)
        s = tl.sigmoid(2.0 * u)
        return s + 2.0 * a * s * (1.0 - s) * _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * a * a)
    elif ACT == 1:
        return 0.5 * (1.0 + tl.erf(a * _INV_SQRT_2)) + a * tl.exp(-0.5 * a * a) * _INV_SQRT_2PI
    elif ACT == 2:
        s = tl.sigmoid(a)
        return s * (1.0 + a * (1.0 - s))
    else:
        return (a > 0.0).to(tl.float32)


@triton.jit
def _weight(w_ptr, layer, cols, C: tl.constexpr):
    """Layer ``layer``'s [C, C] weight tile, re-read from L2 at every use (volatile: a hoisted
    copy of every layer's weights would hold hundreds of registers for the whole loop)."""
    return tl.load(w_ptr + layer * C * C + cols[:, None] * C + cols[None, :], volatile=True)


@triton.jit
def _linear(h_dot, wt_ptr, b_ptr, layer, cols, C: tl.constexpr, PREC: tl.constexpr):
    """fp32 ``h Wᵀ + b`` of layer ``layer`` for a tile ``h_dot`` [BT, C] in the dot dtype;
    ``wt_ptr`` holds the transposed weights [L, in, out] in that dtype."""
    bias = tl.load(b_ptr + layer * C + cols)
    return tl.dot(h_dot, _weight(wt_ptr, layer, cols, C), input_precision=PREC) + bias[None, :]


@triton.jit
def _load_rows(ptr, rows, cols, T, C: tl.constexpr):
    """fp32 tile [BT, C] of a row-major [T, C] tensor; rows past T read as 0."""
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    return tl.load(ptr + offs, mask=rows[:, None] < T, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, value, rows, cols, T, C: tl.constexpr):
    offs = rows[:, None].to(tl.int64) * C + cols[None, :]
    tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=rows[:, None] < T)


@triton.jit
def _normalise(x, eps, C: tl.constexpr):
    """(x̂, 1/σ) of LayerNorm over the last axis of an fp32 tile (before its affine)."""
    mean = tl.sum(x, axis=1) / C
    xc = x - mean[:, None]
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    return xc * rstd[:, None], rstd


@triton.jit
def _layer_norm_grad(g, xhat, rstd, lnw, C: tl.constexpr):
    """d x of LayerNorm for d out = g (fp32 tiles), given x̂, 1/σ and the affine weight."""
    dxhat = g * lnw[None, :]
    mean_d = tl.sum(dxhat, axis=1) / C
    mean_dx = tl.sum(dxhat * xhat, axis=1) / C
    return rstd[:, None] * (dxhat - mean_d[:, None] - xhat * mean_dx[:, None])


@triton.jit
def _layer0_input(x_ptr, lnw_ptr, lnb_ptr, rows, cols, T, eps, C: tl.constexpr, LN: tl.constexpr):
    """The first layer's fp32 input tile: LN(x) with its affine, or x."""
    return _affine_norm(_load_rows(x_ptr, rows, cols, T, C), lnw_ptr, lnb_ptr, cols, eps, C, LN)


@triton.jit
def _affine_norm(h, lnw_ptr, lnb_ptr, cols, eps, C: tl.constexpr, LN: tl.constexpr):
    """LN(h) with its affine for an fp32 tile h, or h."""
    if LN:
        xhat, rstd = _normalise(h, eps, C)
        h = xhat * tl.load(lnw_ptr + cols)[None, :] + tl.load(lnb_ptr + cols)[None, :]
    return h


@triton.jit
def mlp_fwd_kernel(
    x_ptr, res_ptr, out_ptr, hid_ptr, lnw_ptr, lnb_ptr, wt_ptr, b_ptr, T, eps,
    C: tl.constexpr, NL: tl.constexpr, LN: tl.constexpr, RES: tl.constexpr, ACT: tl.constexpr,
    SAVE: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, BT: tl.constexpr,
    y_ptr=None, pt_ptr=None, pb_ptr=None, PRE: tl.constexpr = False,
):
    """One tile of BT rows: out = [res +] h_L, h_0 = [LN](x), h_{i+1} = h_i + act(h_i W_iᵀ + b_i)
    (no activation on the last of the NL layers). With SAVE, the inputs h_1..h_{NL-1} of the
    layers after the first go to ``hid_ptr`` [NL-1, T, C] in the dot dtype, for the backward.
    With ``PRE`` the MLP's input is x1 = x + y Pᵀ + p_b (a projection of y added to the stream
    first; ``pt_ptr``: Pᵀ [in, out] in the dot dtype, ``pb_ptr`` p_b), written to ``res_ptr`` in its
    dtype (what the backward reads as the input) and used as rounded there, residual included."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.arange(0, C)
    if PRE:
        y = _load_rows(y_ptr, rows, cols, T, C).to(DOT)
        x1 = _load_rows(x_ptr, rows, cols, T, C) + tl.dot(y, _weight(pt_ptr, 0, cols, C), input_precision=PREC)
        x1 = (x1 + tl.load(pb_ptr + cols)[None, :]).to(res_ptr.dtype.element_ty)
        _store_rows(res_ptr, x1, rows, cols, T, C)
        h = _affine_norm(x1.to(tl.float32), lnw_ptr, lnb_ptr, cols, eps, C, LN)
    else:
        h = _layer0_input(x_ptr, lnw_ptr, lnb_ptr, rows, cols, T, eps, C, LN)
    for i in tl.static_range(NL):
        h_dot = h.to(DOT)
        if SAVE and i > 0:
            _store_rows(hid_ptr + (i - 1) * T.to(tl.int64) * C, h_dot, rows, cols, T, C)
        a = _linear(h_dot, wt_ptr, b_ptr, i, cols, C, PREC)
        if i < NL - 1:
            h = h + _act(a, ACT)
        else:
            h = h + a
    if RES:  # (PRE: x1, as this program wrote it)
        h = h + _load_rows(res_ptr, rows, cols, T, C)
    _store_rows(out_ptr, h, rows, cols, T, C)


@triton.jit
def mlp_bwd_kernel(
    x_ptr, hid_ptr, dout_ptr, dx_ptr, lnw_ptr, lnb_ptr, w_ptr, wt_ptr, b_ptr, dw_ptr, db_ptr, dln_ptr, T, eps,
    C: tl.constexpr, NL: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr, LN: tl.constexpr,
    STORED: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, BT: tl.constexpr,
):
    """Backward through layers LO..HI-1 for the rows of tiles pid, pid + P, ...

    ``dout_ptr`` holds the gradient of layer HI-1's output (of the MLP's output when HI = NL);
    ``dx_ptr`` receives the gradient of layer LO's input (of x, through the LayerNorm, when
    LO = 0), fp32. The inputs of layers LO..HI-1 come from what the forward kept (``STORED``:
    ``hid_ptr`` [NL-1, T, C] holds the inputs of layers 1..NL-1; layer 0's is LN(x), recomputed)
    or from recomputing the chain from x; only the segment's inputs are held per tile, so
    splitting a deep MLP into segments bounds the registers. This program's partial sums of
    dW, db (layers LO..HI-1) and of the LayerNorm's (dγ, dβ) go to slot pid of the partial
    buffers [P, NL, C, C], [P, NL, C], [P, 2, C].
    """
    pid = tl.program_id(0)
    cols = tl.arange(0, C)
    dws = ()  # one accumulator per layer; those outside LO..HI stay zero and are never stored
    dbs = ()
    for i in tl.static_range(NL):
        dws = dws + (tl.zeros((C, C), tl.float32),)
        dbs = dbs + (tl.zeros((C,), tl.float32),)
    dlnw = tl.zeros((C,), tl.float32)
    dlnb = tl.zeros((C,), tl.float32)
    for start in range(pid * BT, T, tl.num_programs(0) * BT):
        rows = start + tl.arange(0, BT)
        hs = ()  # the inputs of layers LO..HI-1, in the dot dtype
        if STORED:
            for i in tl.static_range(LO, HI):
                if i == 0:
                    hs = hs + (_layer0_input(x_ptr, lnw_ptr, lnb_ptr, rows, cols, T, eps, C, LN).to(DOT),)
                else:
                    hs = hs + (_load_rows(hid_ptr + (i - 1) * T.to(tl.int64) * C, rows, cols, T, C).to(DOT),)
        else:
            h = _layer0_input(x_ptr, lnw_ptr, lnb_ptr, rows, cols, T, eps, C, LN)
            for i in tl.static_range(HI - 1):
                h_dot = h.to(DOT)
                if i >= LO:
                    hs = hs + (h_dot,)
                h = h + _act(_linear(h_dot, wt_ptr, b_ptr, i, cols, C, PREC), ACT)
            hs = hs + (h.to(DOT),)
        g = _load_rows(dout_ptr, rows, cols, T, C)  # d h_HI (a residual step's output, or the MLP's)
        for i in tl.static_range(HI - 1, LO - 1, -1):
            if i == NL - 1:  # no activation after the last layer
                da = g
            else:
                da = g * _act_grad(_linear(hs[i - LO], wt_ptr, b_ptr, i, cols, C, PREC), ACT)
            da_dot = da.to(DOT)
            dw = tl.dot(tl.trans(da_dot), hs[i - LO], input_precision=PREC)
            dws = dws[:i] + (dws[i] + dw,) + dws[i + 1:]
            dbs = dbs[:i] + (dbs[i] + tl.sum(da, axis=0),) + dbs[i + 1:]
            g = g + tl.dot(da_dot, _weight(w_ptr, i, cols, C), input_precision=PREC)
        if LN and LO == 0:  # g = d LN(x): back through the affine and the normalisation (x̂ from x, reloaded)
            xhat, rstd = _normalise(_load_rows(x_ptr, rows, cols, T, C), eps, C)
            dlnw += tl.sum(g * xhat, axis=0)
            dlnb += tl.sum(g, axis=0)
            g = _layer_norm_grad(g, xhat, rstd, tl.load(lnw_ptr + cols), C)
        _store_rows(dx_ptr, g, rows, cols, T, C)
    for i in tl.static_range(LO, HI):
        tl.store(dw_ptr + ((pid * NL + i) * C + cols[:, None]) * C + cols[None, :], dws[i])
        tl.store(db_ptr + (pid * NL + i) * C + cols, dbs[i])
    if LO == 0:
        tl.store(dln_ptr + pid * 2 * C + cols, dlnw)
        tl.store(dln_ptr + (pid * 2 + 1) * C + cols, dlnb)


@triton.jit
def mlp_bwd_da_kernel(
    x_ptr, hid_ptr, h0_ptr, dout_ptr, dx_ptr, da_ptr, lnw_ptr, lnb_ptr, w_ptr, wt_ptr, b_ptr, dln_ptr, T, eps,
    C: tl.constexpr, NL: tl.constexpr, LN: tl.constexpr, STORED: tl.constexpr, ACT: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr, BT: tl.constexpr, DA_LAST: tl.constexpr,
    STORE_H0: tl.constexpr, ACC_DX: tl.constexpr, ADD_DOUT: tl.constexpr,
    p_ptr=None, dy_ptr=None, PRE: tl.constexpr = False, H0_FROM_X: tl.constexpr = False,
):
    """The backward's row pass for one tile of BT rows, all layers at once (the weight gradients
    are left to ``mlp_dw_kernel``): the gradient of each layer's pre-activation, d aᵢ, goes to
    ``da_ptr`` [NL, T, C] and dx to ``dx_ptr``; layer 0's input LN(x) goes to ``h0_ptr`` [T, C]
    (both in the dot dtype). The last layer's d a is the output's gradient itself: without
    ``DA_LAST`` (the gradient already in the dot dtype) it is not written again and ``da_ptr``
    holds layers 0..NL-2 only. Two MLPs of one input (keys and values) share LN(x): the second pass
    reads ``h0_ptr`` as the first wrote it (not ``STORE_H0``) and adds its dx to the first's
    (``ACC_DX``). An MLP whose residual is its own input (the feed-forward's ``x + mlp(LN x)``) adds
    the output's gradient to dx here (``ADD_DOUT``) rather than in another pass. With ``PRE`` x is
    x1 = x + y Pᵀ + p_b as the forward wrote it: dx is also x's gradient, and d y = dx P goes to
    ``dy_ptr`` (``p_ptr``: P [out, in] in the dot dtype). With ``H0_FROM_X`` layer 0's input LN(x) is
    recomputed from x (in L2 by then) where it is needed, never written (``mlp_dw_kernel`` recomputes it too).
    The inputs of layers 1..NL-1 are read from ``hid_ptr`` [NL-1, T, C]:
    what the forward kept (``STORED``), or written there first by recomputing the chain. Nothing
    accumulates across tiles (the LayerNorm's (dγ, dβ) partials go to slot pid of ``dln_ptr``
    [tiles, 2, C]), so the kernel holds few registers and many tiles share an SM."""
    pid = tl.program_id(0)
    cols = tl.arange(0, C)
    rows = pid * BT + tl.arange(0, BT)
    layer_stride = T.to(tl.int64) * C
    if STORE_H0 or not STORED:
        h = _layer0_input(x_ptr, lnw_ptr, lnb_ptr, rows, cols, T, eps, C, LN)  # fp32, as in the forward
        if STORE_H0:
            _store_rows(h0_ptr, h.to(DOT), rows, cols, T, C)
        if not STORED:  # the chain once more, its layer inputs kept for this pass and for the weight gradients
            for i in tl.static_range(NL - 1):
                h = h + _act(_linear(h.to(DOT), wt_ptr, b_ptr, i, cols, C, PREC), ACT)
                _store_rows(hid_ptr + i * layer_stride, h.to(DOT), rows, cols, T, C)
    g = _load_rows(dout_ptr, rows, cols, T, C)  # d of the MLP's output
    for i in tl.static_range(NL - 1, -1, -1):
        if i == 0 and H0_FROM_X:
            h_i = _layer0_input(x_ptr, lnw_ptr, lnb_ptr, rows, cols, T, eps, C, LN).to(DOT)
        elif i == 0:  # re-read (from L2) rather than held in registers through the loop
            h_i = _load_rows(h0_ptr, rows, cols, T, C).to(DOT)
        else:
            h_i = _load_rows(hid_ptr + (i - 1) * layer_stride, rows, cols, T, C).to(DOT)
        if i == NL - 1:  # no activation after the last layer
            da = g
        else:
            da = g * _act_grad(_linear(h_i, wt_ptr, b_ptr, i, cols, C, PREC), ACT)
        da_dot = da.to(DOT)
        if DA_LAST or i < NL - 1:
            _store_rows(da_ptr + i * layer_stride, da_dot, rows, cols, T, C)
        g = g + tl.dot(da_dot, _weight(w_ptr, i, cols, C), input_precision=PREC)
    if LN:
        xhat, rstd = _normalise(_load_rows(x_ptr, rows, cols, T, C), eps, C)
        tl.store(dln_ptr + pid * 2 * C + cols, tl.sum(g * xhat, axis=0))
        tl.store(dln_ptr + (pid * 2 + 1) * C + cols, tl.sum(g, axis=0))
        g = _layer_norm_grad(g, xhat, rstd, tl.load(lnw_ptr + cols), C)
    if ADD_DOUT:  # the residual path's gradient (re-read: held through the loop it would cost registers)
        g += _load_rows(dout_ptr, rows, cols, T, C)
    if ACC_DX:
        g += _load_rows(dx_ptr, rows, cols, T, C)
    _store_rows(dx_ptr, g, rows, cols, T, C)
    if PRE:
        _store_rows(dy_ptr, tl.dot(g.to(DOT), _weight(p_ptr, 0, cols, C), input_precision=PREC), rows, cols, T, C)


@triton.jit
def mlp_dw_kernel(
    da_ptr, dout_ptr, h0_ptr, hid_ptr, dw_ptr, db_ptr, T, rows_per_program, x_ptr, lnw_ptr, lnb_ptr, eps,
    C: tl.constexpr, NL: tl.constexpr, PREC: tl.constexpr, BT: tl.constexpr, DA_LAST: tl.constexpr,
    dx_ptr=None, y_ptr=None, PRE: tl.constexpr = False, FIRST: tl.constexpr = 0, H0_FROM_X: tl.constexpr = False,
    LN: tl.constexpr = False,
):
    """Weight and bias gradients of layer ``program_id(1)`` over one slice of the rows:
    dWᵢ = Σ d aᵢᵀ hᵢ and dbᵢ = Σ d aᵢ over rows [pid·R, (pid+1)·R), into slot pid of the
    partial buffers [P, NW, C, C] and [P, NW, C] (a split-K GEMM, its loop pipelined). The last
    layer's d a is read from ``dout_ptr`` (the output's gradient in the dot dtype) unless ``DA_LAST``.
    With ``PRE`` a last slot (NW = NL + 1) holds the input projection's: Σ dxᵀ y and Σ dx. The
    launch covers layers FIRST, FIRST + 1, ...; with ``H0_FROM_X`` it is layer 0 alone, its input
    [LN](x) recomputed from ``x_ptr`` rather than read from ``h0_ptr``."""
    pid = tl.program_id(0)
    i = tl.program_id(1) + FIRST
    NW: tl.constexpr = NL + PRE
    cols = tl.arange(0, C)
    layer_stride = T.to(tl.int64) * C
    h_ptr = h0_ptr
    if i > 0:
        h_ptr = hid_ptr + (i - 1) * layer_stride
    a_ptr = da_ptr + i * layer_stride
    if not DA_LAST:
        if i == NL - 1:
            a_ptr = dout_ptr
    if PRE:
        if i == NL:
            a_ptr, h_ptr = dx_ptr, y_ptr
    dw = tl.zeros((C, C), tl.float32)
    db = tl.zeros((C,), tl.float32)
    lo = pid * rows_per_program
    hi = tl.minimum(lo + rows_per_program, T)
    for start in range(lo, hi, BT):
        rows = start + tl.arange(0, BT)
        offs = rows[:, None].to(tl.int64) * C + cols[None, :]
        inside = rows[:, None] < hi
        da = tl.load(a_ptr + offs, mask=inside, other=0.0)
        if H0_FROM_X:  # rows past the slice get LN's bias, against zero d a
            h = _layer0_input(x_ptr, lnw_ptr, lnb_ptr, rows, cols, hi, eps, C, LN).to(da.dtype)
        else:
            h = tl.load(h_ptr + offs, mask=inside, other=0.0)
        dw = tl.dot(tl.trans(da), h, dw, input_precision=PREC)
        db += tl.sum(da.to(tl.float32), axis=0)
    tl.store(dw_ptr + ((pid * NW + i) * C + cols[:, None]) * C + cols[None, :], dw)
    tl.store(db_ptr + (pid * NW + i) * C + cols, db)
