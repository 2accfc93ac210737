"""Triton forward kernels of the FLARE mixer.

Logits are kept in base 2: ``t = (s log2 e) q·k``, so ``exp`` becomes one ``exp2`` and
every log-sum-exp below (``lse``) is in base 2. Tiles are padded to powers of two of at
least 16 (what ``tl.dot`` needs); the padding is masked, never read from memory. M and D
are compile-time constants, so that the masks over D fold away and point rows load as
16-byte vectors (``_rows``).

Encode (``z = softmax_N(t) v``) is split over the point axis: program (m-tile, chunk,
b·h) runs an online softmax over its chunk and writes a partial (max, sum, weighted sum);
``_encode_merge_kernel`` joins the chunks by log-sum-exp. Decode (``y = softmax_M(t) z``)
runs over chunks of point tiles with an online softmax over latent tiles.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Start value of running maxima: finite, so that exp2(NEG - NEG) = 1 rather than NaN.
# Masked logits are -inf instead: exp2 gives exactly 0 even after the scaling FMA, where a
# finite sentinel such as NEG would leave the FMA's rounding residual (~1e22) in the exponent.
NEG = tl.constexpr(-1.0e30)


@triton.jit
def _rows(base, offs_n, stride, offs_d, ALIGN: tl.constexpr):
    """Pointers [BN, BD] to rows ``offs_n`` of a point tensor (unit stride over D).

    ``ALIGN`` elements divide every row start (see ``triton_mixer._align``); saying so
    lets the loads and stores of point rows become 16-byte vectors.
    """
    ptrs = base + offs_n.to(tl.int64)[:, None] * stride + offs_d[None, :]
    nbytes: tl.constexpr = ALIGN * (base.dtype.element_ty.primitive_bitwidth // 8)
    return tl.max_contiguous(tl.multiple_of(ptrs, [1, nbytes]), [1, ALIGN])


@triton.jit
def _chunk_program(H):
    """(chunk, b·h, b as int64, h) of a program on the (chunks, B·H) grid."""
    pid_bh = tl.program_id(1)
    return tl.program_id(0), pid_bh, (pid_bh // H).to(tl.int64), pid_bh % H


@triton.jit
def _head_base(ptr, b64, h, s_b, s_h):
    """Start of (batch b, head h) in a [B, H, N, D] tensor (64-bit offsets)."""
    return ptr + b64 * s_b + h.to(tl.int64) * s_h


@triton.jit
def _latents(base, offs_m, offs_d, M: tl.constexpr, D: tl.constexpr):
    """Tile [BM, BD] of latent rows ``offs_m`` of one head's row-major [M, D] block at
    ``base`` (q: q_ptr + h·M·D; z, dz: ptr + b·h·M·D), zero off M and D."""
    mask = (offs_m < M)[:, None] & (offs_d < D)[None, :]
    return tl.load(base + offs_m[:, None] * D + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _encode_partial_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, m_part_ptr, l_part_ptr, acc_part_ptr,
    N, H, qk_scale, tiles_per_chunk,
    s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_mb,
    M: tl.constexpr, D: tl.constexpr, ALIGN: tl.constexpr,
    HAS_KEYMASK: tl.constexpr, HAS_MASK: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial encode over one chunk of points for one latent tile.

    q: [H, M, D]; k, v: [B, H, N, D] (strided, unit stride over D); mask: [B, N] uint8.
    Writes m_part, l_part [B·H, chunks, M] and acc_part [B·H, chunks, M, D] (fp32).
    """
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_bh = tl.program_id(2)
    num_chunks = tl.num_programs(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    d_ok = offs_d < D
    q = _latents(q_ptr + h * M * D, offs_m, offs_d, M, D)  # [BM, BD]
    k_base = _head_base(k_ptr, b.to(tl.int64), h, s_kb, s_kh)
    v_base = _head_base(v_ptr, b.to(tl.int64), h, s_vb, s_vh)

    m_i = tl.full([BLOCK_M], NEG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_begin = pid_c * tiles_per_chunk * BLOCK_N
    for t in range(tiles_per_chunk):
        offs_n = n_begin + t * BLOCK_N + offs_n0
        n_ok = offs_n < N
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(_rows(k_base, offs_n, s_kn, offs_d, ALIGN), mask=kv_mask, other=0.0)  # [BN, BD]
        v = tl.load(_rows(v_base, offs_n, s_vn, offs_d, ALIGN), mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)  # [BM, BN], unscaled
        if HAS_KEYMASK:
            valid = n_ok
            if HAS_MASK:
                valid = valid & (tl.load(mask_ptr + b * s_mb + offs_n, mask=n_ok, other=0) != 0)
            s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(tl.fma(s, qk_scale, -m_new[:, None]))  # scale folded into one FMA per logit
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new

    row = (pid_bh * num_chunks + pid_c) * M + offs_m
    tl.store(m_part_ptr + row, m_i, mask=m_ok)
    tl.store(l_part_ptr + row, l_i, mask=m_ok)
    tl.store(acc_part_ptr + row[:, None] * D + offs_d[None, :], acc, mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _encode_merge_kernel(
    m_part_ptr, l_part_ptr, acc_part_ptr, z_ptr, z_lo_ptr, lse_ptr, num_chunks,
    M: tl.constexpr, D: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Join chunk partials by log-sum-exp into z [B·H, M, D] (fp32, and z_lo in the
    input dtype for the tensor-core products) and lse [B·H, M] (base 2).

    Each program owns BLOCK_M latents and reads BLOCK_C chunks per step, so the join
    is a short loop over many programs rather than a long one over few.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_c0 = tl.arange(0, BLOCK_C)
    m_ok = offs_m < M
    d_ok = offs_d < D
    mx = tl.full([BLOCK_M], NEG, tl.float32)
    l_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for c0 in range(0, num_chunks, BLOCK_C):
        offs_c = c0 + offs_c0
        ok = (offs_c < num_chunks)[:, None] & m_ok[None, :]  # [BC, BM]
        row = (pid_bh * num_chunks + offs_c)[:, None] * M + offs_m[None, :]
        m_c = tl.load(m_part_ptr + row, mask=ok, other=NEG)
        l_c = tl.load(l_part_ptr + row, mask=ok, other=0.0)
        a_c = tl.load(acc_part_ptr + row[:, :, None] * D + offs_d[None, None, :],
                      mask=ok[:, :, None] & d_ok[None, None, :], other=0.0)  # [BC, BM, BD]
        mx_new = tl.maximum(mx, tl.max(m_c, 0))
        alpha = tl.exp2(mx - mx_new)
        w = tl.exp2(m_c - mx_new[None, :])
        l_sum = l_sum * alpha + tl.sum(w * l_c, 0)
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * a_c, 0)
        mx = mx_new
    l_sum = tl.where(m_ok & (l_sum > 0), l_sum, 1.0)  # a sample with no real point: z = 0, finite
    out = pid_bh * M + offs_m
    md_ok = m_ok[:, None] & d_ok[None, :]
    z = acc / l_sum[:, None]
    tl.store(z_ptr + out[:, None] * D + offs_d[None, :], z, mask=md_ok)
    tl.store(z_lo_ptr + out[:, None] * D + offs_d[None, :], z.to(z_lo_ptr.dtype.element_ty), mask=md_ok)
    tl.store(lse_ptr + out, mx + tl.log2(l_sum), mask=m_ok)


@triton.jit
def _decode_fwd_kernel(
    q_ptr, z_ptr, k_ptr, y_ptr, lse_ptr,
    N, H, qk_scale, tiles_per_chunk,
    s_kb, s_kh, s_kn, s_yb, s_yh, s_yn,
    M: tl.constexpr, D: tl.constexpr, ALIGN: tl.constexpr, NUM_M_TILES: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Decode a chunk of point tiles: y [B, H, N, D] and its log-sum-exp lse [B·H, N] (base 2).

    q: [H, M, D] and z: [B·H, M, D], both in the input dtype.
    """
    pid_c, pid_bh, b64, h = _chunk_program(H)
    k_base = _head_base(k_ptr, b64, h, s_kb, s_kh)
    y_base = _head_base(y_ptr, b64, h, s_yb, s_yh)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    if NUM_M_TILES == 1:  # the whole latent side stays in registers
        q_all = _latents(q_ptr + h * M * D, offs_m0, offs_d, M, D)
        z_all = _latents(z_ptr + pid_bh * M * D, offs_m0, offs_d, M, D)

    n_begin = pid_c * tiles_per_chunk * BLOCK_N
    for t in range(tiles_per_chunk):
        offs_n = n_begin + t * BLOCK_N + offs_n0
        n_ok = offs_n < N
        nd_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(_rows(k_base, offs_n, s_kn, offs_d, ALIGN), mask=nd_mask, other=0.0)  # [BN, BD]
        if NUM_M_TILES == 1:  # one softmax over the whole row, no rescaling
            s = tl.dot(k, tl.trans(q_all), input_precision=PREC)  # [BN, BM], unscaled
            if M % BLOCK_M != 0:
                s = tl.where((offs_m0 < M)[None, :], s, float("-inf"))
            m_i = tl.max(s, 1) * qk_scale
            p = tl.exp2(tl.fma(s, qk_scale, -m_i[:, None]))
            l_i = tl.sum(p, 1)
            acc = tl.dot(p.to(z_all.dtype), z_all, input_precision=PREC)
        else:
            m_i = tl.full([BLOCK_N], NEG, tl.float32)
            l_i = tl.zeros([BLOCK_N], tl.float32)
            acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
            for mt in range(NUM_M_TILES):
                offs_m = mt * BLOCK_M + offs_m0
                m_ok = offs_m < M
                q = _latents(q_ptr + h * M * D, offs_m, offs_d, M, D)
                z = _latents(z_ptr + pid_bh * M * D, offs_m, offs_d, M, D)
                s = tl.dot(k, tl.trans(q), input_precision=PREC)  # [BN, BM], unscaled
                if M % BLOCK_M != 0:
                    s = tl.where(m_ok[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(tl.fma(s, qk_scale, -m_new[:, None]))
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(z.dtype), z, input_precision=PREC)
                m_i = m_new
        y = acc * (1.0 / l_i)[:, None]  # one division per point, not per element
        tl.store(_rows(y_base, offs_n, s_yn, offs_d, ALIGN), y.to(y_ptr.dtype.element_ty), mask=nd_mask)
        tl.store(lse_ptr + pid_bh.to(tl.int64) * N + offs_n, m_i + tl.log2(l_i), mask=n_ok)
