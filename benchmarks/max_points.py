"""Largest number of points per sample that trains on this GPU (GitHub issue 5).

For each config of ``benchmarks/step.py`` (8 blocks, C=64, M=64 or ``--latents``, batch 1, bf16 autocast),
a full training step (forward, backward, grad-clip, AdamW) is tried at N = start, 2N,
4N, ... until it runs out of memory, then N is bisected between the last success and the
first failure (to 1/32 of N, in multiples of 2^14) while the time budget lasts. Between
tries everything is freed (``empty_cache``). Reports the largest N that trained and the
peak memory it took, and writes them as a record (``benchmarks/records.py``).

    PYTHONPATH=$PWD python benchmarks/max_points.py                  # all configs
    PYTHONPATH=$PWD python benchmarks/max_points.py --configs reference ours-memory --budget-s 60
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve
from benchmarks.records import add_out_argument, write_record
from benchmarks.step import CONFIGS, MEASURES, SHAPE, TrainStep, build, environment

GRAIN = 2**14


def try_step(model: torch.nn.Module, n: int, device: torch.device) -> float | None:
    """Peak GB of one training step at ``n`` points, or None when it runs out of memory."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    ok = True
    try:
        step = TrainStep(model, n, device)
        step()
        torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        ok = False
    except RuntimeError as err:  # some kernels report OOM as a plain RuntimeError
        if "out of memory" not in str(err).lower():
            raise
        ok = False
    step = None  # noqa: F841  (drop the inputs before measuring the next size)
    for p in model.parameters():
        p.grad = None
    gc.collect()
    peak = torch.cuda.max_memory_allocated() / 1e9
    torch.cuda.empty_cache()
    return peak if ok else None


def search(name: str, device: torch.device, start: int, budget_s: float) -> dict:
    model = build(name, device)
    t0 = time.perf_counter()
    tries: list[tuple[int, float | None]] = []
    lo, hi, n = 0, None, start
    while hi is None and time.perf_counter() - t0 < budget_s:
        peak = try_step(model, n, device)
        tries.append((n, peak))
        print(f"  {name}: N={n:>10,d} {'ok, peak %.1f GB' % peak if peak else 'out of memory'}", flush=True)
        lo, hi, n = (n, None, 2 * n) if peak else (lo, n, n)
    while hi is not None and hi - lo > max(GRAIN, lo // 32) and time.perf_counter() - t0 < budget_s:
        mid = (lo + hi) // 2 // GRAIN * GRAIN
        peak = try_step(model, mid, device)
        tries.append((mid, peak))
        print(f"  {name}: N={mid:>10,d} {'ok, peak %.1f GB' % peak if peak else 'out of memory'}", flush=True)
        lo, hi = (mid, hi) if peak else (lo, mid)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    best = max((t for t in tries if t[1] is not None), default=(0, None))
    return {"config": name, "latents": SHAPE["num_latents"], "max_n": best[0], "peak_gb_at_max": best[1], "first_failure": hi,
            "resolved": hi is not None and hi - lo <= max(GRAIN, lo // 32),
            "seconds": round(time.perf_counter() - t0, 1), "tries": tries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["reference", "ours-fast", "ours-ckpt", "ours-memory"],
                        choices=list(CONFIGS))
    parser.add_argument("--start", type=int, default=2**20, help="first N tried")
    parser.add_argument("--budget-s", type=float, default=75.0, help="search time per config")
    parser.add_argument("--latents", type=int, default=SHAPE["num_latents"],
                        help="M latents per head (the shipped DrivAerML-1M config: 256)")
    add_out_argument(parser)
    args = parser.parse_args()
    SHAPE["num_latents"] = args.latents
    device = torch.device("cuda")
    info = environment(device)
    info["total_gb"] = torch.cuda.get_device_properties(device).total_memory / 1e9
    info["alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    print(info, flush=True)
    rows = [search(name, device, args.start, args.budget_s) for name in args.configs]
    print(f"\n{'config':<15}{'max N':>14}{'M points':>10}{'peak GB':>9}{'first OOM':>14}  resolved")
    for r in rows:
        peak = f"{r['peak_gb_at_max']:.1f}" if r["peak_gb_at_max"] else "-"
        fail = f"{r['first_failure']:,d}" if r["first_failure"] else "-"
        print(f"{r['config']:<15}{r['max_n']:>14,d}{r['max_n'] / 2**20:>10.2f}{peak:>9}{fail:>14}  {r['resolved']}")
    write_record("max_points", rows, paths=[*MEASURES, "benchmarks/step.py"], out=args.out, environment=info)


if __name__ == "__main__":
    main()
