"""Measured exp2 ceiling of the card and what it implies for the issue-4 targets.

Every logit of the N x M x H grid goes through exp2 twice in the forward (encode and
decode softmax) and twice more in the backward, on the special-function units (MUFU).
This script measures the card's exp2 rate with a Triton kernel that does little else,
times the two-SDPA reference at N = 2^20 in the same run, and prints, per (H, D, M), the
exp2 floors against the times that a 5x forward and a 10x forward+backward would need,
and writes them as a record (``benchmarks/records.py``).

    PYTHONPATH=$PWD python benchmarks/exp2_floor.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve
from benchmarks.records import add_out_argument, write_record


@triton.jit
def _exp2_chains(x_ptr, out_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    """Four independent exp2 chains per element; x in [-1, 0] keeps every value in range."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    a = tl.load(x_ptr + offs)
    b = a * 0.5
    c = a * 0.25
    d = a * 0.125
    for _ in range(ITERS):
        a = tl.exp2(a) - 1.0
        b = tl.exp2(b) - 1.0
        c = tl.exp2(c) - 1.0
        d = tl.exp2(d) - 1.0
    tl.store(out_ptr + offs, a + b + c + d)


def exp2_rate(iters: int = 4096, block: int = 1024) -> float:
    """exp2 per second over the whole card (median of 5 timed launches)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    n = sms * 16 * block
    x = -torch.rand(n, device="cuda")
    out = torch.empty_like(x)
    grid = (n // block,)
    _exp2_chains[grid](x, out, ITERS=iters, BLOCK=block, num_warps=8)
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _exp2_chains[grid](x, out, ITERS=iters, BLOCK=block, num_warps=8)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    assert torch.isfinite(out).all()
    return 4 * n * iters / sorted(times)[2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/exp2_floor.py needs a CUDA GPU")
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from mixer import SHAPES, Timer, _inputs, measure

    from flare_lightning.kernels.reference import flare_mix_sdpa

    props = torch.cuda.get_device_properties(0)
    rate = exp2_rate()
    print(f"{props.name}, {props.multi_processor_count} SMs: exp2 {rate / 1e12:.2f}e12/s "
          f"({rate / props.multi_processor_count / 1.98e9:.1f} per SM-cycle at 1.98 GHz)")
    n = 2**20
    timer = Timer()
    print("| (H, D, M) | N·M·H | sdpa fwd / fwd+bwd ms | 5x fwd needs | exp2 floor fwd | 10x fwd+bwd needs | exp2 floor fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for h, d, m in SHAPES:
        q, k, v, dy = _inputs(h, d, m, n)
        ref = measure(flare_mix_sdpa, (q, k, v), dy, timer)
        grid = n * m * h
        fwd_floor, fb_floor = 2 * grid / rate * 1e3, 4 * grid / rate * 1e3
        print(f"| ({h}, {d}, {m}) | {grid:.2e} | {ref['fwd']:.2f} / {ref['fwd_bwd']:.2f} | {ref['fwd'] / 5:.2f} | "
              f"{fwd_floor:.2f} | {ref['fwd_bwd'] / 10:.2f} | {fb_floor:.2f} |", flush=True)
        rows.append({"H": h, "D": d, "M": m, "n": n, "grid": grid, "sdpa_fwd_ms": ref["fwd"], "sdpa_fwd_bwd_ms": ref["fwd_bwd"],
                     "fwd_5x_needs_ms": ref["fwd"] / 5, "floor_fwd_ms": fwd_floor,
                     "fwd_bwd_10x_needs_ms": ref["fwd_bwd"] / 10, "floor_fwd_bwd_ms": fb_floor, "exp2_per_s": rate})
        del q, k, v, dy
        torch.cuda.empty_cache()
    write_record("exp2_floor", rows, paths=["flare_lightning/kernels/reference.py", "benchmarks/mixer.py"], out=args.out,
                 environment={"sms": props.multi_processor_count})


if __name__ == "__main__":
    main()
