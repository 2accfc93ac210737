"""Fused FLARE mixer on Triton: launch logic and the autograd Function.

``flare_mix_triton(q, k, v, mask, scale)`` computes the same function as
``reference.flare_mix_explicit`` without materialising any [N, M] tensor. The forward
runs three kernels (chunked encode, log-sum-exp merge, decode), the backward two passes
over the points (decode side, then encode side) and two small joins of their partials. Each logit
goes through exp2 four times in all (twice forward, twice backward). Saved for backward:
y, z [B, H, M, D] and one fp32 log-sum-exp per latent and per point besides the inputs;
nothing of size N x M.

The kernels take a positive scale and fold it into the exp2 argument (one FMA per logit);
``flare_mix_triton`` runs a negative scale as |s| with q negated, and s = 0 with q zeroed.

Importing this module needs Triton; ``dispatch`` imports it only when asked for.
Under ``TRITON_INTERPRET=1`` (set before this import) the kernels run on CPU tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from flare_lightning.kernels.dot_precision import input_precision
from flare_lightning.kernels.reference import check_mixer_inputs
from flare_lightning.kernels.triton_mixer_bwd import (
    _bwd_decode_kernel,
    _bwd_encode_kernel,
    _bwd_latent_grad_kernel,
    _dq_sum_kernel,
)
from flare_lightning.kernels.triton_mixer_fwd import (
    _decode_fwd_kernel,
    _encode_merge_kernel,
    _encode_partial_kernel,
)

LOG2E = 1.4426950408889634
INTERPRETED = type(_decode_fwd_kernel).__name__ == "InterpretedFunction"
# Chunk partials are [B·H, chunks, M, D] fp32; cap them so that large M·D stays cheap.
_PARTIAL_BYTES = 64 * 2**20


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes (powers of two >= 16) and warps of one kernel."""

    block_n: int
    block_m: int
    num_warps: int = 4
    num_stages: int = 2
    programs_per_sm: int | None = None  # None: the MixerConfig's
    maxnreg: int | None = None  # register cap per thread (more programs per SM, maybe spills)
    latent_rows: bool = False  # backward decode only: logits as [block_m, block_n] tiles (fewer transposes)
    latent_groups: int = 1  # backward decode only: latent tiles split over this many programs per chunk

    def launch_options(self) -> dict:
        """Keyword arguments of a Triton launch with this config."""
        opts = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.maxnreg is not None and not INTERPRETED:
            opts["maxnreg"] = self.maxnreg
        return opts


@dataclass(frozen=True)
class MixerConfig:
    """Launch configuration of the four heavy kernels and the chunking target.

    ``programs_per_sm`` sets how many programs the chunked kernels (forward encode and
    both backward passes) aim for: enough to fill the GPU, few enough that the [M, D]
    partials they each write stay small. A kernel's own ``programs_per_sm`` overrides it.
    """

    encode: KernelConfig
    decode: KernelConfig
    bwd_decode: KernelConfig
    bwd_encode: KernelConfig
    programs_per_sm: int = 8


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, 1 << max(0, math.ceil(math.log2(max(1, x)))))


def default_config(m: int, d: int, dtype: torch.dtype = torch.bfloat16) -> MixerConfig:
    """Tile sizes for M latents, head dim d and the inputs' dtype, from per-kernel sweeps on
    an H200 at N = 2^20 in bf16 (``benchmarks/mixer_tune.py``; benchmarks/NOTES_mixer.md)."""
    bm = _pow2(m)
    if INTERPRETED:  # numpy executes whole tiles: large tiles, few loop steps
        small = KernelConfig(block_n=32, block_m=min(bm, 32))
        return MixerConfig(small, small, small, small, programs_per_sm=1)
    if dtype == torch.float32:  # the exact path: 32 x 32 tiles keep fp32 operands in registers (no spills)
        tile = KernelConfig(32, min(bm, 32), 4, 2)
        return MixerConfig(tile, tile, tile, tile)
    tile_m = min(bm, 64)
    if d > 32:  # wide heads: fewer registers per logit to spare, the first sweep's tiles
        tile = KernelConfig(64, tile_m, 4)
        return MixerConfig(tile, tile, tile, KernelConfig(64, tile_m if bm <= 64 else 32, 4))
    st = 3  # a third pipeline stage paid off for small head dims
    cap = d <= 16  # register caps (one more program per SM) were measured for d <= 16 only
    encode = KernelConfig(64, tile_m, 4, st, programs_per_sm=14 if cap else 8, maxnreg=72 if cap else None)
    if bm <= 64:
        dec = KernelConfig(64, tile_m, 4, st, programs_per_sm=16)
        bwd_dec = KernelConfig(64, tile_m, 4, st, programs_per_sm=12)
        bwd_enc = KernelConfig(64, tile_m, 4, st, programs_per_sm=6)
    elif bm == 128:  # one latent tile: the per-latent sums stay in registers, no atomics
        dec = KernelConfig(64, 128, 4, st)
        bwd_dec = KernelConfig(64, 128, 4, 2, programs_per_sm=4)
        bwd_enc = KernelConfig(128, 32, 4, 2, programs_per_sm=6)
    else:  # M 256, d <= 8 (as measured): 128-point decode tiles, 1.04 against 1.34 ms at (8, 8, 256) (NOTES_mixer, round 4)
        wide = bm == 256 and d <= 8
        dec = KernelConfig(128, 64, 4, st, programs_per_sm=8) if wide else KernelConfig(64, 64, 4, st, programs_per_sm=16)
        bwd_dec = KernelConfig(64, 64, 4, st, programs_per_sm=12, maxnreg=128 if cap else None)
        bwd_enc = KernelConfig(64, 64, 4, 2, programs_per_sm=12, maxnreg=128 if cap else None)
    return MixerConfig(encode=encode, decode=dec, bwd_decode=bwd_dec, bwd_encode=bwd_enc)


CONFIG_OVERRIDE: Callable[[int, int, torch.dtype], MixerConfig] | None = None  # benchmarks time candidate tiles through it


def launch_config(m: int, d: int, dtype: torch.dtype = torch.bfloat16) -> MixerConfig:
    """The tiles the mixer's custom ops launch: ``default_config``'s, or ``CONFIG_OVERRIDE``'s where a
    benchmark sets one (``benchmarks/train_step_small.py`` times candidate tiles in the whole step)."""
    return (CONFIG_OVERRIDE or default_config)(m, d, dtype)


@lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_programs_target(device: torch.device, cfg: MixerConfig, kernel: KernelConfig) -> int:
    per_sm = kernel.programs_per_sm or cfg.programs_per_sm
    if device.type != "cuda":
        return 4 * per_sm
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device()) * per_sm


def _chunking(n: int, block_n: int, other_programs: int, target: int, partial_bytes: int) -> tuple[int, int]:
    """(tiles per chunk, chunks) splitting ceil(n / block_n) point tiles over programs."""
    n_tiles = _cdiv(n, block_n)
    chunks = max(1, min(n_tiles, _cdiv(target, other_programs), _PARTIAL_BYTES // max(1, partial_bytes)))
    tiles_per_chunk = _cdiv(n_tiles, chunks)
    return tiles_per_chunk, _cdiv(n_tiles, tiles_per_chunk)


def _latent_groups(m: int, kernel: KernelConfig) -> tuple[int, int]:
    """(latent tiles per program, groups) of the backward decode: ``kernel.latent_groups`` groups
    of whole tiles, as even as the tiles allow, none empty."""
    if kernel.latent_groups < 1:
        raise ValueError(f"KernelConfig.latent_groups must be >= 1, got {kernel.latent_groups}")
    m_tiles = _cdiv(m, kernel.block_m)
    per_group = _cdiv(m_tiles, min(kernel.latent_groups, m_tiles))
    return per_group, _cdiv(m_tiles, per_group)


JOIN_M = 16  # latents per program of the kernels that join chunk partials (merge, dz, dq)


def join_tiles(block_d: int) -> dict[str, int]:
    """Tile constants of the joins over chunk partials: 16 latents per program, chunks read
    ``BLOCK_C`` at a time so that a step loads 4096 values."""
    return {"BLOCK_M": JOIN_M, "BLOCK_C": max(1, 4096 // (JOIN_M * block_d)), "BLOCK_D": block_d}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _align(*ts: Tensor) -> int:
    """Elements (a power of two, at most 16 bytes' worth) dividing every row start of ``ts``.

    Row starts are ``data_ptr + b·s_b + h·s_h + n·s_n``; the kernels promise the compiler
    this alignment so that point rows move as 16-byte vectors.
    """
    g = 0
    for t in ts:
        g = math.gcd(g, t.data_ptr() // t.element_size())
        for st in t.stride()[:3]:
            g = math.gcd(g, st)
    cap = 16 // ts[0].element_size()
    return min(g & -g, cap) if g else cap


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _launch_constants(q: Tensor, k: Tensor, mask: Tensor | None, scale: float) -> tuple:
    """Shapes and launch constants shared by the forward and backward passes:
    (B, H, N, D, M, B·H, device, padded D, scale·log2 e, dot precision, mask as uint8
    (k as a dummy pointer when there is none), mask row stride)."""
    b, h, n, d = k.shape
    mask_u8 = mask.view(torch.uint8) if mask is not None else k
    mask_stride = mask.stride(0) if mask is not None else 0
    return b, h, n, d, q.shape[1], b * h, k.device, _pow2(d), scale * LOG2E, input_precision(k.dtype), mask_u8, mask_stride


def _encode(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, cfg: MixerConfig):
    """The encode of the points of k, v: z [B·H, M, D] (fp32, and z_lo in the input dtype) and
    its log-sum-exp lse_enc [B·H, M] (fp32, base 2; about -1e30 for a latent that saw no real point)."""
    b, h, n, d, m, bh, dev, bd, qk_scale, prec, mask_u8, mask_stride = _launch_constants(q, k, mask, scale)
    ce = cfg.encode
    m_tiles = _cdiv(m, ce.block_m)
    tiles, chunks = _chunking(n, ce.block_n, bh * m_tiles, _num_programs_target(dev, cfg, ce), bh * m * d * 4)
    m_part = torch.empty(bh, chunks, m, device=dev, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    acc_part = torch.empty(bh, chunks, m, d, device=dev, dtype=torch.float32)
    _encode_partial_kernel[(m_tiles, chunks, bh)](
        q, k, v, mask_u8, m_part, l_part, acc_part,
        n, h, qk_scale, tiles,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), mask_stride,
        M=m, D=d, ALIGN=_align(k, v), HAS_KEYMASK=mask is not None or n % ce.block_n != 0, HAS_MASK=mask is not None, PREC=prec,
        BLOCK_N=ce.block_n, BLOCK_M=ce.block_m, BLOCK_D=bd, **ce.launch_options(),
    )
    z = torch.empty(bh, m, d, device=dev, dtype=torch.float32)
    z_lo = torch.empty(bh, m, d, device=dev, dtype=k.dtype)
    lse_enc = torch.empty(bh, m, device=dev, dtype=torch.float32)
    _encode_merge_kernel[(_cdiv(m, JOIN_M), bh)](
        m_part, l_part, acc_part, z, z_lo, lse_enc, chunks,
        M=m, D=d, **join_tiles(bd), num_warps=4,
    )
    return z, z_lo, lse_enc


def _decode(q: Tensor, z_lo: Tensor, k: Tensor, scale: float, cfg: MixerConfig, like: Tensor) -> tuple[Tensor, Tensor]:
    """The decode of the points of k given z_lo [B·H, M, D] (k's dtype): y [B, H, N, D] with
    ``like``'s dtype and layout, and its log-sum-exp lse_dec [B·H, N] (fp32, base 2)."""
    b, h, n, d, m, bh, dev, bd, qk_scale, prec, _, _ = _launch_constants(q, k, None, scale)
    cd = cfg.decode
    y = torch.empty_like(like)
    lse_dec = torch.empty(bh, n, device=dev, dtype=torch.float32)
    tiles, chunks = _chunking(n, cd.block_n, bh, _num_programs_target(dev, cfg, cd), 0)
    _decode_fwd_kernel[(chunks, bh)](
        q, z_lo, k, y, lse_dec, n, h, qk_scale, tiles,
        k.stride(0), k.stride(1), k.stride(2), y.stride(0), y.stride(1), y.stride(2),
        M=m, D=d, ALIGN=_align(k, y), NUM_M_TILES=_cdiv(m, cd.block_m), PREC=prec,
        BLOCK_N=cd.block_n, BLOCK_M=cd.block_m, BLOCK_D=bd, **cd.launch_options(),
    )
    return y, lse_dec


def _flare_forward(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, cfg: MixerConfig, merge=None):
    """Returns y [B, H, N, D], z [B·H, M, D] (fp32 and input dtype), lse_enc [B·H, M],
    lse_dec [B·H, N] (fp32, base 2). ``merge(z, lse_enc) -> (z, lse_enc)``, if given, joins
    this encode with other ranks' shares of the points (context parallelism) before the decode."""
    z, z_lo, lse_enc = _encode(q, k, v, mask, scale, cfg)
    if merge is not None:
        z, lse_enc = merge(z, lse_enc)
        z_lo = z.to(k.dtype)
    y, lse_dec = _decode(q, z_lo, k, scale, cfg, like=v)
    return y, z, z_lo, lse_enc, lse_dec


def _flare_backward(q, k, v, mask, y, z, z_lo, lse_enc, lse_dec, dy, scale: float, cfg: MixerConfig, reduce_dz=None):
    """Returns dq [H, M, D] (q's dtype), dk, dv [B, H, N, D]. ``reduce_dz(dz) -> dz``, if given,
    sums the latents' gradient over the ranks that share z (context parallelism)."""
    b, h, n, d, m, bh, dev, bd, qk_scale, prec, mask_u8, mask_stride = _launch_constants(q, k, mask, scale)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)

    c1 = cfg.bwd_decode
    tiles_1, groups = _latent_groups(m, c1)
    tiles, chunks_1 = _chunking(n, c1.block_n, bh * groups, _num_programs_target(dev, cfg, c1), 2 * bh * m * d * 4)
    dz_part = torch.empty(bh, chunks_1, m, d, device=dev, dtype=torch.float32)
    dq_part_1 = torch.empty_like(dz_part)
    # the decode part of dk: in dk itself, or one share per latent group (summed by the encode side);
    # its strides (b, h, n, group) and the slices whose row starts set the alignment, for both kernels
    if groups == 1:
        dk_dec, dec_strides, dec_rows = dk, (*dk.stride()[:3], 0), (dk,)
    else:
        dk_dec = torch.empty(groups, b, h, n, d, device=dev, dtype=k.dtype)
        dec_strides, dec_rows = (*dk_dec.stride()[1:4], dk_dec.stride(0)), tuple(dk_dec.unbind(0)[:2])
    _bwd_decode_kernel[(chunks_1, bh, groups)](
        q, k, y, dy, z_lo, lse_dec, dk_dec, dz_part, dq_part_1,
        n, h, qk_scale, scale, tiles,
        k.stride(0), k.stride(1), k.stride(2), y.stride(0), y.stride(1), y.stride(2),
        dy.stride(0), dy.stride(1), dy.stride(2), *dec_strides,
        M=m, D=d, ALIGN=_align(k, y, dy, *dec_rows), NUM_M_TILES=tiles_1, PREC=prec,
        BLOCK_N=c1.block_n, BLOCK_M=c1.block_m, BLOCK_D=bd, LATENT_ROWS=c1.latent_rows, **c1.launch_options(),
    )
    if reduce_dz is None:  # dz_lo = Σ_chunks dz_part and δ_m = dz_m·z_m [B·H, M], one launch
        dz_lo = torch.empty(bh, m, d, device=dev, dtype=k.dtype)
        delta = torch.empty(bh, m, device=dev, dtype=torch.float32)
        _bwd_latent_grad_kernel[(_cdiv(m, JOIN_M), bh)](
            dz_part, z, dz_lo, delta, chunks_1, M=m, D=d, **join_tiles(bd), num_warps=4,
        )
    else:  # the ranks' dz are summed first
        dz = reduce_dz(dz_part.sum(1))  # [B·H, M, D] fp32
        delta = (dz * z).sum(-1)
        dz_lo = dz.to(k.dtype)

    c2 = cfg.bwd_encode
    tiles_2 = _cdiv(m, c2.block_m)
    tiles, chunks_2 = _chunking(n, c2.block_n, bh, _num_programs_target(dev, cfg, c2), bh * m * d * 4)
    dq_part_2 = torch.empty(bh, chunks_2, m, d, device=dev, dtype=torch.float32)
    _bwd_encode_kernel[(chunks_2, bh)](
        q, k, v, mask_u8, dz_lo, delta, lse_enc, dk_dec, dk, dv, dq_part_2,
        n, h, qk_scale, scale, tiles,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        *dec_strides,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2), mask_stride,
        M=m, D=d, ALIGN=_align(k, v, dk, dv, *dec_rows),
        HAS_KEYMASK=mask is not None or n % c2.block_n != 0, HAS_MASK=mask is not None,
        NUM_M_TILES=tiles_2, PREC=prec,
        BLOCK_N=c2.block_n, BLOCK_M=c2.block_m, BLOCK_D=bd, DK_PARTS=groups, **c2.launch_options(),
    )
    dq = torch.empty(h, m, d, device=dev, dtype=q.dtype)  # s Σ_{b, chunks} of both passes' partials
    _dq_sum_kernel[(_cdiv(m, JOIN_M), h)](
        dq_part_1, chunks_1, dq_part_2, chunks_2, dq, b, h, scale,
        M=m, D=d, **join_tiles(bd), num_warps=4,
    )
    return dq, dk, dv


class FlareMixTriton(torch.autograd.Function):
    """Autograd wrapper: inputs as ``flare_mix_triton``; gradients for q, k and v."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, cfg):
        y, z, z_lo, lse_enc, lse_dec = _flare_forward(q, k, v, mask, scale, cfg)
        ctx.save_for_backward(q, k, v, mask, y, z, z_lo, lse_enc, lse_dec)
        ctx.scale = scale
        ctx.cfg = cfg
        return y

    @staticmethod
    def backward(ctx, dy):
        q, k, v, mask, y, z, z_lo, lse_enc, lse_dec = ctx.saved_tensors
        dq, dk, dv = _flare_backward(
            q, k, v, mask, y, z, z_lo, lse_enc, lse_dec, _unit_last(dy), ctx.scale, ctx.cfg
        )
        return dq, dk, dv, None, None, None


def _prepare(name: str, q: Tensor, k: Tensor, v: Tensor | None, mask: Tensor | None, scale: float):
    """Checked kernel inputs (q, k, v, mask, scale): one dtype the kernels take, CUDA (or the
    interpreter), unit stride over D, and a positive scale (the kernels fold it into exp2's
    argument: s·q = |s|·(-q); s = 0 makes every logit 0)."""
    check_mixer_inputs(q, k, k if v is None else v, mask)
    if q.dtype != k.dtype or (v is not None and v.dtype != k.dtype):
        got = ", ".join(str(t.dtype) for t in (q, k, v) if t is not None)
        raise TypeError(f"{name}: q, k, v must share one dtype, got {got}")
    if k.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{name}: dtype must be float32, bfloat16 or float16, got {k.dtype}")
    if not (k.is_cuda or INTERPRETED):
        raise RuntimeError(f"{name} needs CUDA tensors (or TRITON_INTERPRET=1 set before import)")
    if mask is not None:
        mask = mask.contiguous()
    scale = float(scale)
    if scale <= 0.0:
        q, scale = (-q, -scale) if scale < 0.0 else (q * 0.0, 1.0)
    return q.contiguous(), _unit_last(k), None if v is None else _unit_last(v), mask, scale


def flare_mix_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    scale: float = 1.0,
    config: MixerConfig | None = None,
) -> Tensor:
    """Fused FLARE mixer ``softmax_M(s k qᵀ) softmax_N(s q kᵀ) v``.

    Args:
        q: latent queries [H, M, D], same dtype as k (fp32, bf16 or fp16).
        k: keys [B, H, N, D]; any strides with unit stride over D (else copied).
        v: values [B, H, N, D], same dtype as k.
        mask: [B, N] bool, True on real points, or None.
        scale: logit scale s.
        config: tile sizes; ``default_config(M, D, dtype)`` when None (then the
            ``flare_lightning::mixer_fwd`` custom op runs, which torch.compile traces).

    Returns:
        y [B, H, N, D] with v's dtype and layout; rows at padded points are finite but
        carry no meaning.
    """
    q, k, v, mask, scale = _prepare("flare_mix_triton", q, k, v, mask, scale)
    if config is None:
        from flare_lightning.kernels.triton_op import mixer_fwd

        return mixer_fwd(q, k, v, mask, scale)[0]
    return FlareMixTriton.apply(q, k, v, mask, scale, config)


@torch.no_grad()
def flare_encode_triton(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The encode alone, without autograd, for evaluation over point chunks: the chunks'
    results join exactly (``mixer_math.normalised_stats``, then ``merge_stats``).

    Args as ``flare_mix_triton``. Returns z = softmax_N(s q kᵀ) v [B, H, M, D] (fp32) and its
    base-2 log-sum-exp [B, H, M] (fp32; about -1e30, with z = 0, for a latent with no real point).
    """
    from flare_lightning.kernels.triton_op import encode_eval  # compiled evaluations trace the op

    q, k, v, mask, scale = _prepare("flare_encode_triton", q, k, v, mask, scale)
    b, h = k.shape[:2]
    z, lse = encode_eval(q, k, v, mask, scale)
    return z.view(b, h, *z.shape[1:]), lse.view(b, h, -1)


@torch.no_grad()
def flare_decode_triton(q: Tensor, z: Tensor, k: Tensor, scale: float = 1.0) -> Tensor:
    """The decode alone, without autograd: y = softmax_M(s k qᵀ) z [B, H, N, D] in k's dtype
    and layout, for latent summaries z [B, H, M, D] (cast to k's dtype, as the fused forward
    does) and the keys k of any chunk of points. Other args as ``flare_mix_triton``."""
    q, k, _, _, scale = _prepare("flare_decode_triton", q, k, None, None, scale)
    b, h, m, d = k.shape[0], k.shape[1], q.shape[1], q.shape[2]
    if tuple(z.shape) != (b, h, m, d):
        raise ValueError(f"flare_decode_triton: z must be [B, H, M, D] = {[b, h, m, d]}, got {list(z.shape)}")
    from flare_lightning.kernels.triton_op import decode_eval

    return decode_eval(q, z.to(k.dtype).reshape(b * h, m, d).contiguous(), k, scale)


__all__ = [
    "FlareMixTriton", "KernelConfig", "MixerConfig", "default_config", "flare_decode_triton", "flare_encode_triton",
    "flare_mix_triton",
]
