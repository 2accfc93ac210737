"""Triton backward kernels of the FLARE mixer.

With base-2 logits ``t = (s log2 e) q kᵀ`` and natural ``S = s q kᵀ``, encode weights
``A = exp2(t - lse_enc[m])`` and decode weights ``P = exp2(t - lse_dec[n])``:

    dz_m  = Σ_n P[n,m] dy_n                                   (reduction over points)
    dS    = A (dz_m·v_n - δ_m) + P (dy_n·z_m - Δ_n),   δ_m = dz_m·z_m,  Δ_n = dy_n·y_n
    dv_n  = Σ_m A[m,n] dz_m,   dk_n = s Σ_m dS q_m,   dq_m = s Σ_{b,n} dS k_n

``_bwd_dz_kernel`` computes chunk partials of dz (split over points like the encode).
``_bwd_main_kernel`` then runs over point tiles, each program a chunk of them, looping
over latent tiles: dk, dv per point in registers; dq as one partial per program, kept in
registers when one latent tile covers M, else added atomically into the program's own
slot (no contention). Partials are summed afterwards; nothing is recomputed twice.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _bwd_dz_kernel(
    q_ptr, k_ptr, dy_ptr, lse_dec_ptr, dz_part_ptr,
    N, M, D, H, qk_scale, tiles_per_chunk,
    s_kb, s_kh, s_kn, s_gb, s_gh, s_gn,
    EVEN_M: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Partial dz over one chunk of points: dz_part [B·H, chunks, M, D] fp32."""
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
    g_base = dy_ptr + b.to(tl.int64) * s_gb + h.to(tl.int64) * s_gh
    lse_base = lse_dec_ptr + pid_bh.to(tl.int64) * N

    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_begin = pid_c * tiles_per_chunk * BLOCK_N
    for t in range(tiles_per_chunk):
        offs_n = n_begin + t * BLOCK_N + offs_n0
        n_ok = offs_n < N
        nd_mask = n_ok[:, None] & d_ok[None, :]
        rows = offs_n.to(tl.int64)[:, None]
        k = tl.load(k_base + rows * s_kn + offs_d[None, :], mask=nd_mask, other=0.0)  # [BN, BD]
        dy = tl.load(g_base + rows * s_gn + offs_d[None, :], mask=nd_mask, other=0.0)
        lse = tl.load(lse_base + offs_n, mask=n_ok, other=0.0)  # [BN]
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # [BM, BN]
        p = tl.exp2(s - lse[None, :])  # P^T; padded points carry dy = 0
        if not EVEN_M:  # padded latent rows (s = 0) could overflow, then give inf * 0
            p = tl.where(m_ok[:, None], p, 0.0)
        acc += tl.dot(p.to(dy.dtype), dy, input_precision=PREC)

    row = (pid_bh * num_chunks + pid_c) * M + offs_m
    tl.store(dz_part_ptr + row[:, None] * D + offs_d[None, :], acc, mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _bwd_main_kernel(
    q_ptr, k_ptr, v_ptr, y_ptr, dy_ptr, mask_ptr, z_ptr, dz_ptr, lse_enc_ptr, lse_dec_ptr,
    dk_ptr, dv_ptr, dq_part_ptr,
    N, M, D, H, qk_scale, scale, tiles_per_chunk,
    s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_yb, s_yh, s_yn, s_gb, s_gh, s_gn,
    s_dkb, s_dkh, s_dkn, s_dvb, s_dvh, s_dvn, s_mb,
    HAS_KEYMASK: tl.constexpr, HAS_MASK: tl.constexpr, EVEN_M: tl.constexpr,
    NUM_M_TILES: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dk, dv [B, H, N, D] and dq partials (unscaled: the caller multiplies them by s).

    z, dz: [B·H, M, D] fp32; lse_enc [B·H, M]; lse_dec [B·H, N]; dq_part
    [B·H, chunks, M, D] fp32 (zeroed by the caller when NUM_M_TILES > 1).
    """
    pid_c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    num_chunks = tl.num_programs(0)
    b = pid_bh // H
    h = pid_bh % H
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    dq_row0 = (pid_bh * num_chunks + pid_c) * M
    lse_dec_base = lse_dec_ptr + pid_bh.to(tl.int64) * N
    dq_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    n_begin = pid_c * tiles_per_chunk * BLOCK_N
    for t in range(tiles_per_chunk):
        offs_n = n_begin + t * BLOCK_N + offs_n0
        n_ok = offs_n < N
        nd_mask = n_ok[:, None] & d_ok[None, :]
        rows = offs_n.to(tl.int64)[:, None]
        k = tl.load(k_ptr + b64 * s_kb + h64 * s_kh + rows * s_kn + offs_d[None, :], mask=nd_mask, other=0.0)
        v = tl.load(v_ptr + b64 * s_vb + h64 * s_vh + rows * s_vn + offs_d[None, :], mask=nd_mask, other=0.0)
        y = tl.load(y_ptr + b64 * s_yb + h64 * s_yh + rows * s_yn + offs_d[None, :], mask=nd_mask, other=0.0)
        dy = tl.load(dy_ptr + b64 * s_gb + h64 * s_gh + rows * s_gn + offs_d[None, :], mask=nd_mask, other=0.0)
        lse_dec = tl.load(lse_dec_base + offs_n, mask=n_ok, other=0.0)  # [BN]
        delta_dec = tl.sum(dy.to(tl.float32) * y.to(tl.float32), 1)  # Δ_n [BN]
        if HAS_KEYMASK:
            valid = n_ok
            if HAS_MASK:
                valid = valid & (tl.load(mask_ptr + b * s_mb + offs_n, mask=n_ok, other=0) != 0)
        dk_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for mt in range(NUM_M_TILES):
            offs_m = mt * BLOCK_M + offs_m0
            m_ok = offs_m < M
            md_mask = m_ok[:, None] & d_ok[None, :]
            lat = (pid_bh * M + offs_m)[:, None] * D + offs_d[None, :]
            q = tl.load(q_ptr + h * M * D + offs_m[:, None] * D + offs_d[None, :], mask=md_mask, other=0.0)
            z = tl.load(z_ptr + lat, mask=md_mask, other=0.0)
            dz = tl.load(dz_ptr + lat, mask=md_mask, other=0.0)
            lse_enc = tl.load(lse_enc_ptr + pid_bh * M + offs_m, mask=m_ok, other=float("inf"))
            delta_enc = tl.sum(dz * z, 1)  # δ_m [BM]
            s = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # [BN, BM]
            a = tl.exp2(s - lse_enc[None, :])  # A^T; 0 on padded latents
            if HAS_KEYMASK:
                a = tl.where(valid[:, None], a, 0.0)
            p = tl.exp2(s - lse_dec[:, None])  # P
            if not EVEN_M:
                p = tl.where(m_ok[None, :], p, 0.0)
            d_a = tl.dot(v, tl.trans(dz.to(v.dtype)), input_precision=PREC)  # dz_m·v_n [BN, BM]
            d_p = tl.dot(dy, tl.trans(z.to(dy.dtype)), input_precision=PREC)  # dy_n·z_m
            ds = a * (d_a - delta_enc[None, :]) + p * (d_p - delta_dec[:, None])
            ds_lo = ds.to(k.dtype)
            dv_acc += tl.dot(a.to(v.dtype), dz.to(v.dtype), input_precision=PREC)
            dk_acc += tl.dot(ds_lo, q, input_precision=PREC)
            dq_tile = tl.dot(tl.trans(ds_lo), k, input_precision=PREC)  # [BM, BD]
            if NUM_M_TILES == 1:
                dq_acc += dq_tile
            else:
                tl.atomic_add(dq_part_ptr + (dq_row0 + offs_m)[:, None] * D + offs_d[None, :],
                              dq_tile, mask=md_mask, sem="relaxed")
        dk_off = b64 * s_dkb + h64 * s_dkh + rows * s_dkn + offs_d[None, :]
        dv_off = b64 * s_dvb + h64 * s_dvh + rows * s_dvn + offs_d[None, :]
        tl.store(dk_ptr + dk_off, (dk_acc * scale).to(dk_ptr.dtype.element_ty), mask=nd_mask)
        tl.store(dv_ptr + dv_off, dv_acc.to(dv_ptr.dtype.element_ty), mask=nd_mask)

    if NUM_M_TILES == 1:
        offs_m = offs_m0
        m_ok = offs_m < M
        tl.store(dq_part_ptr + (dq_row0 + offs_m)[:, None] * D + offs_d[None, :], dq_acc,
                 mask=m_ok[:, None] & d_ok[None, :])

