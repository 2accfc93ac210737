"""Triton forward kernels of the FLARE mixer.

Logits are kept in base 2: ``t = (s log2 e) q·k``, so ``exp`` becomes one ``exp2`` and
every log-sum-exp below (``lse``) is in base 2. Tiles are padded to powers of two of at
least 16 (what ``tl.dot`` needs); the padding is masked, never read from memory.

Encode (``z = softmax_N(t) v``) is split over the point axis: program (m-tile, chunk,
b·h) runs an online softmax over its chunk and writes a partial (max, sum, weighted sum);
``_encode_merge_kernel`` joins the chunks by log-sum-exp. Decode (``y = softmax_M(t) z``)
is parallel over point tiles with an online softmax over latent tiles.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Finite stand-in for -inf on masked logits: exp2 of it is exactly 0, and an all-masked
# tile gives exp2(0) = 1 instead of NaN (its weight then vanishes in the merge).
NEG = tl.constexpr(-1.0e30)


@triton.jit
def _encode_partial_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, m_part_ptr, l_part_ptr, acc_part_ptr,
    N, M, D, H, qk_scale, tiles_per_chunk,
    s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_mb,
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
    q = tl.load(q_ptr + h * M * D + offs_m[:, None] * D + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # [BM, BD]
    k_base = k_ptr + b.to(tl.int64) * s_kb + h.to(tl.int64) * s_kh
    v_base = v_ptr + b.to(tl.int64) * s_vb + h.to(tl.int64) * s_vh

    m_i = tl.full([BLOCK_M], NEG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_begin = pid_c * tiles_per_chunk * BLOCK_N
    for t in range(tiles_per_chunk):
        offs_n = n_begin + t * BLOCK_N + offs_n0
        n_ok = offs_n < N
        kv_mask = n_ok[:, None] & d_ok[None, :]
        rows = offs_n.to(tl.int64)[:, None]
        k = tl.load(k_base + rows * s_kn + offs_d[None, :], mask=kv_mask, other=0.0)  # [BN, BD]
        v = tl.load(v_base + rows * s_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # [BM, BN]
        if HAS_KEYMASK:
            valid = n_ok
            if HAS_MASK:
                valid = valid & (tl.load(mask_ptr + b * s_mb + offs_n, mask=n_ok, other=0) != 0)
            s = tl.where(valid[None, :], s, NEG)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new

    row = (pid_bh * num_chunks + pid_c) * M + offs_m
    tl.store(m_part_ptr + row, m_i, mask=m_ok)
    tl.store(l_part_ptr + row, l_i, mask=m_ok)
    tl.store(acc_part_ptr + row[:, None] * D + offs_d[None, :], acc, mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _encode_merge_kernel(
    m_part_ptr, l_part_ptr, acc_part_ptr, z_ptr, z_lo_ptr, lse_ptr, M, D, num_chunks,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Join chunk partials by log-sum-exp into z [B·H, M, D] (fp32, and z_lo in the
    input dtype for the tensor-core products) and lse [B·H, M] (base 2)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < M
    md_ok = m_ok[:, None] & (offs_d < D)[None, :]
    mx = tl.full([BLOCK_M], NEG, tl.float32)
    for c in range(num_chunks):
        row = (pid_bh * num_chunks + c) * M + offs_m
        mx = tl.maximum(mx, tl.load(m_part_ptr + row, mask=m_ok, other=NEG))
    l_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for c in range(num_chunks):
        row = (pid_bh * num_chunks + c) * M + offs_m
        w = tl.exp2(tl.load(m_part_ptr + row, mask=m_ok, other=NEG) - mx)
        l_sum += w * tl.load(l_part_ptr + row, mask=m_ok, other=0.0)
        part = tl.load(acc_part_ptr + row[:, None] * D + offs_d[None, :], mask=md_ok, other=0.0)
        acc += w[:, None] * part
    l_sum = tl.where(m_ok, l_sum, 1.0)
    out = pid_bh * M + offs_m
    z = acc / l_sum[:, None]
    tl.store(z_ptr + out[:, None] * D + offs_d[None, :], z, mask=md_ok)
    tl.store(z_lo_ptr + out[:, None] * D + offs_d[None, :], z.to(z_lo_ptr.dtype.element_ty), mask=md_ok)
    tl.store(lse_ptr + out, mx + tl.log2(l_sum), mask=m_ok)


@triton.jit
def _decode_fwd_kernel(
    q_ptr, z_ptr, k_ptr, y_ptr, lse_ptr,
    N, M, D, H, qk_scale,
    s_kb, s_kh, s_kn, s_yb, s_yh, s_yn,
    EVEN_M: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Decode one point tile: y [B, H, N, D] and its log-sum-exp lse [B·H, N] (base 2).

    q: [H, M, D] and z: [B·H, M, D], both in the input dtype.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m0 = tl.arange(0, BLOCK_M)
    n_ok = offs_n < N
    d_ok = offs_d < D
    rows = offs_n.to(tl.int64)[:, None]
    nd_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(k_ptr + b.to(tl.int64) * s_kb + h.to(tl.int64) * s_kh + rows * s_kn + offs_d[None, :],
                mask=nd_mask, other=0.0)  # [BN, BD]

    m_i = tl.full([BLOCK_N], NEG, tl.float32)
    l_i = tl.zeros([BLOCK_N], tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for m_start in range(0, M, BLOCK_M):
        offs_m = m_start + offs_m0
        m_ok = offs_m < M
        md_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptr + h * M * D + offs_m[:, None] * D + offs_d[None, :], mask=md_mask, other=0.0)
        z = tl.load(z_ptr + (pid_bh * M + offs_m)[:, None] * D + offs_d[None, :], mask=md_mask, other=0.0)
        s = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # [BN, BM]
        if not EVEN_M:
            s = tl.where(m_ok[None, :], s, NEG)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(z.dtype), z, input_precision=PREC)
        m_i = m_new

    y = acc / l_i[:, None]
    y_off = b.to(tl.int64) * s_yb + h.to(tl.int64) * s_yh + offs_n.to(tl.int64)[:, None] * s_yn
    tl.store(y_ptr + y_off + offs_d[None, :], y.to(y_ptr.dtype.element_ty), mask=nd_mask)
    tl.store(lse_ptr + pid_bh.to(tl.int64) * N + offs_n, m_i + tl.log2(l_i), mask=n_ok)
