"""Triton backward kernels of the FLARE mixer.

With base-2 logits ``t = (s log2 e) q kᵀ`` and natural ``S = s q kᵀ``, decode weights
``P = exp2(t - lse_dec[n])`` and encode weights ``A = exp2(t - lse_enc[m])``:

    decode side:  dz_m = Σ_n P[n,m] dy_n        dS_dec = P (dy_n·z_m - Δ_n),  Δ_n = dy_n·y_n
    encode side:  dv_n = Σ_m A[m,n] dz_m        dS_enc = A (dz_m·v_n - δ_m),  δ_m = dz_m·z_m
    both:         dk_n = s Σ_m dS[m,n] q_m      dq_m = s Σ_{b,n} dS[m,n] k_n

The encode side needs all of dz, a reduction over the points, so the backward is two
passes over point tiles, each computing one exp2 per logit (the forward's two plus these
two make the 4·N·M·H of the floor): ``_bwd_decode_kernel`` (dz and dq partials, dk's
decode part, written to dk) then ``_bwd_encode_kernel`` (dv, dk += encode part, dq
partials). Each program takes a chunk of point tiles and loops over latent tiles: per
point sums stay in registers; per latent sums (dz, dq) are one partial per program, in
registers when one latent tile covers M, else zeroed by the program and added
atomically into its own slot (no contention). The decode side can also split the latents
over programs (``M_GROUPS``): each program then holds one group's latents in registers and
writes its share of dk's decode part to its own [B, H, N, D] slice, which the encode side sums
as it reads them (no atomics, at the cost of one more [N, D] write and read per group). Two small
kernels join the partials: ``_bwd_latent_grad_kernel`` (dz and δ between the passes) and
``_dq_sum_kernel`` (dq at the end), one launch each instead of a dozen small ops.
"""

from __future__ import annotations

import triton
import triton.language as tl

from flare_lightning.kernels.triton_mixer_fwd import _chunk_program, _head_base, _latents, _rows


@triton.jit
def _zero_slot(part_ptr, part_row0, offs_m0, offs_d, M: tl.constexpr, D: tl.constexpr,
               NUM_M_TILES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Zero a program's own [M, D] slot of a partial (instead of a memset launch per tensor)."""
    for mt in range(NUM_M_TILES):
        offs_m = mt * BLOCK_M + offs_m0
        part = (part_row0 + offs_m)[:, None] * D + offs_d[None, :]
        tl.store(part_ptr + part, tl.zeros([BLOCK_M, BLOCK_D], tl.float32),
                 mask=(offs_m < M)[:, None] & (offs_d < D)[None, :])


@triton.jit
def _bwd_decode_kernel(
    q_ptr, k_ptr, y_ptr, dy_ptr, z_ptr, lse_dec_ptr, dk_ptr, dz_part_ptr, dq_part_ptr,
    N, H, qk_scale, scale, tiles_per_chunk,
    s_kb, s_kh, s_kn, s_yb, s_yh, s_yn, s_gb, s_gh, s_gn, s_dkb, s_dkh, s_dkn, s_dkg,
    M: tl.constexpr, D: tl.constexpr, ALIGN: tl.constexpr, NUM_M_TILES: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, LATENT_ROWS: tl.constexpr,
):
    """Decode side: dk = s Σ_m dS_dec q (stored), dz and dq partials [B·H, chunks, M, D].

    z: [B·H, M, D] in the input dtype; lse_dec: [B·H, N] fp32. The partials are fp32,
    each program's slot zeroed by the program itself; dq partials are unscaled.
    ``LATENT_ROWS`` computes the logits as [BM, BN] tiles: dz and dq then take P and dS as
    they are, and only dk takes a transposed one (one layout change per tile instead of two).
    Grid axis 2 splits the latents into groups of NUM_M_TILES tiles: group g sums over its own
    latents only and stores that share of dk at ``dk_ptr + g·s_dkg``.
    """
    pid_c, pid_bh, b64, h = _chunk_program(H)
    pid_g = tl.program_id(2)
    num_chunks = tl.num_programs(0)
    k_base = _head_base(k_ptr, b64, h, s_kb, s_kh)
    y_base = _head_base(y_ptr, b64, h, s_yb, s_yh)
    g_base = _head_base(dy_ptr, b64, h, s_gb, s_gh)
    dk_base = _head_base(dk_ptr + pid_g.to(tl.int64) * s_dkg, b64, h, s_dkb, s_dkh)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m0 = pid_g * (NUM_M_TILES * BLOCK_M) + tl.arange(0, BLOCK_M)  # this group's first latent tile
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    part_row0 = (pid_bh * num_chunks + pid_c) * M
    lse_base = lse_dec_ptr + pid_bh.to(tl.int64) * N
    dz_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    dq_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if NUM_M_TILES == 1:  # the whole latent side stays in registers
        q_all = _latents(q_ptr + h * M * D, offs_m0, offs_d, M, D)
        z_all = _latents(z_ptr + pid_bh * M * D, offs_m0, offs_d, M, D)
    else:
        _zero_slot(dz_part_ptr, part_row0, offs_m0, offs_d, M, D, NUM_M_TILES, BLOCK_M, BLOCK_D)
        _zero_slot(dq_part_ptr, part_row0, offs_m0, offs_d, M, D, NUM_M_TILES, BLOCK_M, BLOCK_D)
        tl.debug_barrier()  # the zeros land before any thread of the program adds to them

    n_begin = pid_c * tiles_per_chunk * BLOCK_N
    for t in range(tiles_per_chunk):
        offs_n = n_begin + t * BLOCK_N + offs_n0
        n_ok = offs_n < N
        nd_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(_rows(k_base, offs_n, s_kn, offs_d, ALIGN), mask=nd_mask, other=0.0)
        y = tl.load(_rows(y_base, offs_n, s_yn, offs_d, ALIGN), mask=nd_mask, other=0.0)
        dy = tl.load(_rows(g_base, offs_n, s_gn, offs_d, ALIGN), mask=nd_mask, other=0.0)
        lse = tl.load(lse_base + offs_n, mask=n_ok, other=0.0)  # [BN]; padded points have dy = 0
        delta = tl.sum(dy.to(tl.float32) * y.to(tl.float32), 1)  # Δ_n [BN]
        dk_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for mt in range(NUM_M_TILES):
            offs_m = mt * BLOCK_M + offs_m0
            m_ok = offs_m < M
            md_mask = m_ok[:, None] & d_ok[None, :]
            if NUM_M_TILES == 1:
                q = q_all
                z = z_all
            else:
                q = _latents(q_ptr + h * M * D, offs_m, offs_d, M, D)
                z = _latents(z_ptr + pid_bh * M * D, offs_m, offs_d, M, D)
            if LATENT_ROWS:  # Pᵀ, dSᵀ [BM, BN]
                s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
                p = tl.exp2(s - lse[None, :])
                if M % BLOCK_M != 0:
                    p = tl.where(m_ok[:, None], p, 0.0)
                d_p = tl.dot(z, tl.trans(dy), input_precision=PREC)  # z_m·dy_n
                ds = (p * (d_p - delta[None, :])).to(k.dtype)
                dz_tile = tl.dot(p.to(dy.dtype), dy, input_precision=PREC)  # [BM, BD]
                dq_tile = tl.dot(ds, k, input_precision=PREC)
                dk_acc += tl.dot(tl.trans(ds), q, input_precision=PREC)
            else:  # P, dS [BN, BM]
                s = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale
                p = tl.exp2(s - lse[:, None])
                if M % BLOCK_M != 0:
                    p = tl.where(m_ok[None, :], p, 0.0)
                d_p = tl.dot(dy, tl.trans(z), input_precision=PREC)  # dy_n·z_m
                ds = (p * (d_p - delta[:, None])).to(k.dtype)
                dz_tile = tl.dot(tl.trans(p.to(dy.dtype)), dy, input_precision=PREC)  # [BM, BD]
                dq_tile = tl.dot(tl.trans(ds), k, input_precision=PREC)
                dk_acc += tl.dot(ds, q, input_precision=PREC)
            if NUM_M_TILES == 1:
                dz_acc += dz_tile
                dq_acc += dq_tile
            else:
                part = (part_row0 + offs_m)[:, None] * D + offs_d[None, :]
                tl.atomic_add(dz_part_ptr + part, dz_tile, mask=md_mask, sem="relaxed")
                tl.atomic_add(dq_part_ptr + part, dq_tile, mask=md_mask, sem="relaxed")
        tl.store(_rows(dk_base, offs_n, s_dkn, offs_d, ALIGN), (dk_acc * scale).to(dk_ptr.dtype.element_ty), mask=nd_mask)

    if NUM_M_TILES == 1:
        m_ok = offs_m0 < M
        part = (part_row0 + offs_m0)[:, None] * D + offs_d[None, :]
        tl.store(dz_part_ptr + part, dz_acc, mask=m_ok[:, None] & d_ok[None, :])
        tl.store(dq_part_ptr + part, dq_acc, mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _bwd_encode_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, dz_ptr, delta_ptr, lse_enc_ptr, dkp_ptr, dk_ptr, dv_ptr, dq_part_ptr,
    N, H, qk_scale, scale, tiles_per_chunk,
    s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_pb, s_ph, s_pn, s_pg, s_dkb, s_dkh, s_dkn, s_dvb, s_dvh, s_dvn, s_mb,
    M: tl.constexpr, D: tl.constexpr, ALIGN: tl.constexpr,
    HAS_KEYMASK: tl.constexpr, HAS_MASK: tl.constexpr, NUM_M_TILES: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, DK_PARTS: tl.constexpr,
):
    """Encode side: dv, dk = s Σ_m dS_enc q + the decode part, dq partials.

    dz: [B·H, M, D] in the input dtype; delta (δ) and lse_enc: [B·H, M] fp32. The decode part
    of dk is the sum of DK_PARTS slices ``dkp_ptr + g·s_pg`` (with one, dkp may be dk itself).
    """
    pid_c, pid_bh, b64, h = _chunk_program(H)
    num_chunks = tl.num_programs(0)
    k_base = _head_base(k_ptr, b64, h, s_kb, s_kh)
    v_base = _head_base(v_ptr, b64, h, s_vb, s_vh)
    dkp_base = _head_base(dkp_ptr, b64, h, s_pb, s_ph)
    dk_base = _head_base(dk_ptr, b64, h, s_dkb, s_dkh)
    dv_base = _head_base(dv_ptr, b64, h, s_dvb, s_dvh)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    part_row0 = (pid_bh * num_chunks + pid_c) * M
    dq_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if NUM_M_TILES == 1:  # the whole latent side stays in registers
        m_ok0 = offs_m0 < M
        q_all = _latents(q_ptr + h * M * D, offs_m0, offs_d, M, D)
        dz_all = _latents(dz_ptr + pid_bh * M * D, offs_m0, offs_d, M, D)
        lse_all = tl.load(lse_enc_ptr + pid_bh * M + offs_m0, mask=m_ok0, other=float("inf"))
        delta_all = tl.load(delta_ptr + pid_bh * M + offs_m0, mask=m_ok0, other=0.0)
    else:
        _zero_slot(dq_part_ptr, part_row0, offs_m0, offs_d, M, D, NUM_M_TILES, BLOCK_M, BLOCK_D)
        tl.debug_barrier()  # the zeros land before any thread of the program adds to them

    n_begin = pid_c * tiles_per_chunk * BLOCK_N
    for t in range(tiles_per_chunk):
        offs_n = n_begin + t * BLOCK_N + offs_n0
        n_ok = offs_n < N
        nd_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(_rows(k_base, offs_n, s_kn, offs_d, ALIGN), mask=nd_mask, other=0.0)
        v = tl.load(_rows(v_base, offs_n, s_vn, offs_d, ALIGN), mask=nd_mask, other=0.0)
        if HAS_KEYMASK:
            valid = n_ok
            if HAS_MASK:
                valid = valid & (tl.load(mask_ptr + b64 * s_mb + offs_n, mask=n_ok, other=0) != 0)
        dk_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for mt in range(NUM_M_TILES):
            offs_m = mt * BLOCK_M + offs_m0
            m_ok = offs_m < M
            md_mask = m_ok[:, None] & d_ok[None, :]
            if NUM_M_TILES == 1:
                q = q_all
                dz = dz_all
                lse = lse_all
                delta = delta_all
            else:
                q = _latents(q_ptr + h * M * D, offs_m, offs_d, M, D)
                dz = _latents(dz_ptr + pid_bh * M * D, offs_m, offs_d, M, D)
                lse = tl.load(lse_enc_ptr + pid_bh * M + offs_m, mask=m_ok, other=float("inf"))  # A = 0 off M
                delta = tl.load(delta_ptr + pid_bh * M + offs_m, mask=m_ok, other=0.0)  # δ_m
            s = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # [BN, BM]
            a = tl.exp2(s - lse[None, :])  # Aᵀ
            if HAS_KEYMASK:
                a = tl.where(valid[:, None], a, 0.0)
            d_a = tl.dot(v, tl.trans(dz), input_precision=PREC)  # dz_m·v_n
            ds = (a * (d_a - delta[None, :])).to(k.dtype)
            dv_acc += tl.dot(a.to(dz.dtype), dz, input_precision=PREC)
            dk_acc += tl.dot(ds, q, input_precision=PREC)
            dq_tile = tl.dot(tl.trans(ds), k, input_precision=PREC)
            if NUM_M_TILES == 1:
                dq_acc += dq_tile
            else:
                part = (part_row0 + offs_m)[:, None] * D + offs_d[None, :]
                tl.atomic_add(dq_part_ptr + part, dq_tile, mask=md_mask, sem="relaxed")
        dk_acc = dk_acc * scale
        for g in tl.static_range(DK_PARTS):  # + the decode side's share(s)
            dkp = _rows(dkp_base + g * s_pg, offs_n, s_pn, offs_d, ALIGN)
            dk_acc += tl.load(dkp, mask=nd_mask, other=0.0).to(tl.float32)
        tl.store(_rows(dk_base, offs_n, s_dkn, offs_d, ALIGN), dk_acc.to(dk_ptr.dtype.element_ty), mask=nd_mask)
        tl.store(_rows(dv_base, offs_n, s_dvn, offs_d, ALIGN), dv_acc.to(dv_ptr.dtype.element_ty), mask=nd_mask)

    if NUM_M_TILES == 1:
        m_ok = offs_m0 < M
        part = (part_row0 + offs_m0)[:, None] * D + offs_d[None, :]
        tl.store(dq_part_ptr + part, dq_acc, mask=m_ok[:, None] & d_ok[None, :])


@triton.jit
def _sum_chunks(part_ptr, bh, num_chunks, offs_m, offs_d, M: tl.constexpr, D: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Σ over chunks of fp32 partials [B·H, chunks, M, D] at row bh: [BLOCK_M, BLOCK_D]."""
    offs_c0 = tl.arange(0, BLOCK_C)
    ok_md = (offs_m < M)[:, None] & (offs_d < D)[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for c0 in range(0, num_chunks, BLOCK_C):
        offs_c = c0 + offs_c0
        row = (bh * num_chunks + offs_c)[:, None] * M + offs_m[None, :]  # [BC, BM]
        ok = (offs_c < num_chunks)[:, None, None] & ok_md[None, :, :]
        acc += tl.sum(tl.load(part_ptr + row[:, :, None] * D + offs_d[None, None, :], mask=ok, other=0.0), 0)
    return acc


@triton.jit
def _bwd_latent_grad_kernel(
    dz_part_ptr, z_ptr, dz_lo_ptr, delta_ptr, num_chunks,
    M: tl.constexpr, D: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Between the passes, in one kernel: dz = Σ_chunks dz_part [B·H, M, D], stored in the
    input dtype for the encode side's products, and δ_m = dz_m·z_m [B·H, M] (fp32, from
    fp32 dz and z). Grid: (latent blocks, B·H)."""
    pid_bh = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < M
    d_ok = offs_d < D
    acc = _sum_chunks(dz_part_ptr, pid_bh, num_chunks, offs_m, offs_d, M, D, BLOCK_C, BLOCK_M, BLOCK_D)
    out = (pid_bh * M + offs_m)[:, None] * D + offs_d[None, :]
    md_ok = m_ok[:, None] & d_ok[None, :]
    z = tl.load(z_ptr + out, mask=md_ok, other=0.0)
    tl.store(dz_lo_ptr + out, acc.to(dz_lo_ptr.dtype.element_ty), mask=md_ok)
    tl.store(delta_ptr + pid_bh * M + offs_m, tl.sum(acc * z, 1), mask=m_ok)


@triton.jit
def _dq_sum_kernel(
    part1_ptr, chunks1, part2_ptr, chunks2, dq_ptr, B, H, scale,
    M: tl.constexpr, D: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dq [H, M, D] = s Σ_b Σ_chunks (part1 + part2) in q's dtype, from both passes' fp32
    partials [B·H, chunks, M, D]. Grid: (latent blocks, H)."""
    h = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < M
    d_ok = offs_d < D
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for b in range(B):
        acc += _sum_chunks(part1_ptr, b * H + h, chunks1, offs_m, offs_d, M, D, BLOCK_C, BLOCK_M, BLOCK_D)
        acc += _sum_chunks(part2_ptr, b * H + h, chunks2, offs_m, offs_d, M, D, BLOCK_C, BLOCK_M, BLOCK_D)
    out = (h * M + offs_m)[:, None] * D + offs_d[None, :]
    tl.store(dq_ptr + out, (acc * scale).to(dq_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
