"""Tile-size sweep of the Triton mixer kernels, one kernel at a time (issue 4).

For each (H, D, M) at N = 2^20 (bf16, B = 1), every kernel (forward encode, decode,
backward decode side, backward encode side) is timed alone for each candidate
``KernelConfig`` (CUDA time per launch from torch.profiler, median over calls). The
kernels are independent launches, so the best candidate of each combines into one
``MixerConfig``; that one, the current default and the two-SDPA reference are then timed
end to end (median of CUDA-event timings, L2 flushed) and checked against the reference.
Candidates compile in parallel worker processes first (Triton's on-disk cache), so the
timed sweep itself does not wait on the compiler. The end-to-end times are written as a record
(``benchmarks/records.py``).

    PYTHONPATH=$PWD python benchmarks/mixer_tune.py --jobs 12 [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve
from benchmarks.records import add_out_argument, write_record

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from mixer import MEASURES, Timer, _inputs, cuda_kernel_times, measure, reference_outputs, rel_diff  # noqa: E402  (benchmarks/ is not a package)

ROLES = ("encode", "decode", "bwd_decode", "bwd_encode")
KERNEL_NAMES = {
    "encode": "_encode_partial_kernel",
    "decode": "_decode_fwd_kernel",
    "bwd_decode": "_bwd_decode_kernel",
    "bwd_encode": "_bwd_encode_kernel",
    "merge": "_encode_merge_kernel",
}
# (block_n, block_m, warps, stages, programs per SM[, register cap]); block_m is clamped to
# M's tile. Round 2 (round 1 and its results: benchmarks/NOTES_mixer.md): stages and program
# counts around the round-1 winners, and register caps that fit one more program per SM
# (128 registers: 4 programs of 4 warps; 72: 7) with the program count a multiple of that.
# Round 3 (entries 8-9 of each role): 128-point tiles, for the small heads of the shipped 1M model
# (H 8, D 8, M 128-256), where a tile's logits cost few registers per point.
# Round 4 (the last three): wider latent tiles for M = 256 (the 1M model; clamped to M below). The
# forward over all of M in one tile (each point row loaded once, no rescaling across latent tiles);
# the backward over 128 latents (half the atomics into the partials): over all 256 it spills (sm_90,
# kernel_resources.py: 255 registers and 32-592 B of stack at 4-8 warps).
# Round 5 (bwd_decode's five with a seventh field True): the backward decode with its logits as
# [block_m, block_n] tiles (``KernelConfig.latent_rows``), at the defaults' and round 3's tiles.
# Round 6 (the last three of each role): mid-size tiles for the fp32 mixer (--dtype float32; its
# default, 32 x 32, holds 65-112 registers on sm_90, these 64 x 32 and 32 x 64 ones stay unspilled).
# Round 8 (bwd_decode's last four, an eighth field): the backward decode with its latents split over
# programs (``KernelConfig.latent_groups``; M = 256: two groups of 128 as M = 128's winner, four of 64),
# each group's sums in registers and its share of dk summed by the encode side: no atomics.
# Round 7 (bwd_encode's last three): the backward encode over one latent tile of 128 at 32-64-point
# tiles (M = 128: no atomics into the dq partials, as the backward decode's winner there; at 0d2271d on an
# H100 the encode side's four 32-latent tiles took 1.32 ms a launch against the decode side's 1.04).
CANDIDATES = {
    "encode": [(64, 64, 4, 3, 6), (64, 64, 4, 3, 12), (64, 64, 4, 3, 7, 72), (64, 64, 4, 3, 14, 72),
               (64, 64, 4, 3, 8, 72), (64, 64, 4, 4, 8), (64, 64, 4, 2, 12), (128, 64, 4, 3, 6), (128, 64, 8, 3, 4),
               (32, 256, 8, 3, 2), (16, 256, 8, 3, 2), (16, 256, 4, 3, 4),
               (32, 64, 4, 2, 8), (64, 32, 4, 2, 8), (32, 64, 4, 3, 12)],
    "decode": [(64, 64, 4, 3, 16), (64, 64, 4, 3, 12), (64, 64, 4, 4, 8), (64, 128, 4, 3, 8), (64, 128, 4, 2, 12),
               (64, 64, 4, 2, 8), (64, 64, 4, 3, 6), (128, 64, 4, 3, 8), (128, 64, 8, 3, 4),
               (32, 256, 8, 3, 2), (16, 256, 8, 3, 2), (64, 256, 8, 2, 1),
               (32, 64, 4, 2, 8), (64, 32, 4, 2, 8), (32, 64, 4, 3, 12)],
    "bwd_decode": [(64, 64, 4, 3, 8, 128), (64, 64, 4, 2, 8, 128), (64, 64, 4, 2, 12, 128), (64, 64, 4, 3, 12, 128),
                   (64, 128, 4, 2, 6, 168), (64, 64, 4, 3, 12), (64, 64, 4, 2, 6), (128, 64, 8, 2, 4),
                   (128, 32, 4, 2, 8, 128), (16, 128, 4, 2, 4), (32, 128, 8, 2, 2), (16, 128, 8, 2, 2),
                   (64, 64, 4, 3, 12, 128, True), (64, 64, 4, 2, 12, 128, True), (64, 64, 4, 3, 8, None, True),
                   (64, 128, 4, 2, 4, None, True), (128, 64, 8, 2, 4, None, True),
                   (32, 64, 4, 2, 8), (64, 32, 4, 2, 8), (32, 64, 4, 3, 12),
                   (64, 128, 4, 2, 4, None, False, 2), (64, 128, 4, 2, 8, None, False, 2),
                   (64, 64, 4, 3, 12, 128, False, 4), (64, 64, 4, 2, 8, None, True, 4)],
    "bwd_encode": [(64, 64, 4, 2, 8, 128), (64, 64, 4, 2, 12, 128), (64, 32, 4, 2, 8, 128), (64, 32, 4, 2, 12, 128),
                   (128, 32, 4, 2, 8, 128), (64, 64, 4, 2, 12), (64, 64, 4, 3, 6), (128, 64, 8, 2, 4),
                   (128, 32, 8, 2, 6), (16, 128, 4, 2, 4), (32, 128, 8, 2, 2), (16, 128, 8, 2, 2),
                   (32, 64, 4, 2, 8), (64, 32, 4, 2, 8), (32, 64, 4, 3, 12),
                   (64, 128, 4, 2, 4), (64, 128, 8, 2, 2), (32, 128, 4, 2, 6)],
}


def candidates(m: int, role: str):
    """The role's candidate KernelConfigs for M latents (block_m clamped, duplicates dropped)."""
    from flare_lightning.kernels.triton_mixer import KernelConfig, _latent_groups, _pow2

    out = []
    for bn, bm, w, st, pps, *rest in CANDIDATES[role]:
        cap, rows, groups = (rest + [None, False, 1][len(rest):])[:3]
        cfg = KernelConfig(bn, min(bm, _pow2(m)), w, st, pps, cap, rows)
        cfg = dataclasses.replace(cfg, latent_groups=_latent_groups(m, dataclasses.replace(cfg, latent_groups=groups))[1])
        if cfg not in out:
            out.append(cfg)
    return out


def variants(m: int, d: int, dtype: torch.dtype = torch.bfloat16):
    """The default config for ``dtype``, then configs whose i-th entry tries candidate i of every role
    (shorter lists repeat the default)."""
    from flare_lightning.kernels.triton_mixer import default_config

    base = default_config(m, d, dtype)
    lists = {role: candidates(m, role) for role in ROLES}
    count = max(len(v) for v in lists.values())
    return [base] + [
        dataclasses.replace(base, **{r: lists[r][i] for r in ROLES if i < len(lists[r])}) for i in range(count)
    ]


def _run(cfg, q, k, v, dy):
    from flare_lightning.kernels.triton_mixer import flare_mix_triton

    for t in (q, k, v):
        t.grad = None
    flare_mix_triton(q, k, v, None, 1.0, config=cfg).backward(dy)


DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _warm(job):
    """Worker: compile one (shape, config) by running it once; the error's name if it fails."""
    shape, cfg, n, dtype, precision = job
    torch.set_float32_matmul_precision(precision)  # fp32 dots: exact or TF32, as the sweep times them
    q, k, v, dy = _inputs(*shape, n, dtype=DTYPES[dtype])
    try:
        _run(cfg, q, k, v, dy)
        torch.cuda.synchronize()
    except Exception as e:  # out of shared memory or registers: the sweep reports it too
        return f"{cfg!r}: {type(e).__name__}"
    return None


def kernel_times(cfg, q, k, v, dy, calls: int = 3) -> dict[str, float]:
    """CUDA microseconds per launch of each mixer kernel (median over ``calls`` fwd+bwd)."""
    times = cuda_kernel_times(lambda: _run(cfg, q, k, v, dy), calls)
    return {role: statistics.median(times[name]) if name in times else float("nan") for role, name in KERNEL_NAMES.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="8:8:64,8:16:128,16:16:256,8:16:512", help="H:D:M triples")
    p.add_argument("--log2n", type=int, default=20)
    p.add_argument("--jobs", type=int, default=8, help="worker processes compiling candidates first")
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16",
                   help="the mixer's operands (float32: the fp32 mixer of 32-true or fp32_parts=[mixer])")
    p.add_argument("--matmul-precision", choices=["highest", "high"], default="highest",
                   help="torch.set_float32_matmul_precision for float32: exact (highest) or TF32 (high) dots")
    add_out_argument(p)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/mixer_tune.py needs a CUDA GPU")
    torch.set_float32_matmul_precision(args.matmul_precision)
    dtype = DTYPES[args.dtype]
    label = "bf16" if dtype == torch.bfloat16 else ("fp32" if args.matmul_precision == "highest" else "fp32-tf32")
    from flare_lightning.kernels.reference import flare_mix_sdpa
    from flare_lightning.kernels.triton_mixer import default_config, flare_mix_triton

    n = 2**args.log2n
    shapes = [tuple(int(x) for x in s.split(":")) for s in args.shapes.split(",")]
    jobs = [((h, d, m), cfg, n, args.dtype, args.matmul_precision) for h, d, m in shapes for cfg in variants(m, d, dtype)]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for failed in pool.imap_unordered(_warm, jobs):
            if failed:
                print(f"compile/run failed: {failed}", flush=True)
    print(f"{len(jobs)} configs compiled", flush=True)

    timer = Timer()
    records = []
    for h, d, m in shapes:
        q, k, v, dy = _inputs(h, d, m, n, dtype=dtype)
        best = {}
        print(f"\n## H={h} D={d} M={m} N=2^{args.log2n}: us per launch", flush=True)
        print("| variant | " + " | ".join(f"{r} config | us" for r in ROLES) + " | merge us |")
        for i, cfg in enumerate(variants(m, d, dtype)):
            try:
                t = kernel_times(cfg, q, k, v, dy)
            except Exception as e:
                print(f"| {i} | failed: {type(e).__name__} |")
                continue
            cells = []
            for role in ROLES:
                kc = getattr(cfg, role)
                cap = f" r{kc.maxnreg}" if kc.maxnreg else ""
                cells.append(f"{kc.block_n}x{kc.block_m} w{kc.num_warps} s{kc.num_stages} p{kc.programs_per_sm}{cap} | {t[role]:.0f}")
                if not math.isnan(t[role]) and (role not in best or t[role] < best[role][0]):
                    best[role] = (t[role], kc)
            print(f"| {i} | " + " | ".join(cells) + f" | {t['merge']:.0f} |", flush=True)
        tuned = dataclasses.replace(default_config(m, d, dtype), **{r: best[r][1] for r in best})
        print(f"best H={h} D={d} M={m}: " + ", ".join(f"{r}={best[r][1]} ({best[r][0]:.0f} us)" for r in best))
        ref_out = reference_outputs((q, k, v), dy)
        rows = {"sdpa": measure(flare_mix_sdpa, (q, k, v), dy, timer)}
        for name, cfg in (("default", default_config(m, d, dtype)), ("tuned", tuned)):
            def fn(q_, k_, v_, cfg=cfg):
                return flare_mix_triton(q_, k_, v_, None, 1.0, config=cfg)
            rows[name] = measure(fn, (q, k, v), dy, timer)
            rows[name]["err"] = rel_diff(fn, ref_out, (q, k, v), dy)
        ref = rows["sdpa"]
        for name, r in rows.items():
            records.append({"H": h, "D": d, "M": m, "n": n, "dtype": label, "config": name, **r,
                            "tiles": str(tuned) if name == "tuned" else None})
            print(f"end-to-end H={h} D={d} M={m} {name:8s}: fwd {r['fwd']:.3f} ms ({ref['fwd'] / r['fwd']:.1f}x), "
                  f"fwd+bwd {r['fwd_bwd']:.3f} ms ({ref['fwd_bwd'] / r['fwd_bwd']:.1f}x), peak {r['peak_mib']:.0f} MiB"
                  + (f", rel. diff {r['err']:.1e}" if "err" in r else ""), flush=True)
        del q, k, v, dy, ref_out
        torch.cuda.empty_cache()
    write_record("mixer_tune", records, paths=[*MEASURES, "benchmarks/mixer.py"], out=args.out)


if __name__ == "__main__":
    main()
