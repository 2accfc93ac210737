"""The fused residual MLP against PyTorch at N = 2^20 points, forward and backward.

One FLARE feed-forward step ``x + mlp(layer_norm(x))`` (C = 64, 3 hidden layers, GELU-tanh,
bf16 autocast, fp32 residual stream), as each block runs it three times (keys, values,
feed-forward). Rows: the plain layers eager and ``torch.compile``d, and the fused Triton
kernels at their default launch configuration, recomputing the layer chain in backward or
reading the layers' inputs the forward kept (``store_hidden``); ``--sweep`` adds other tiles,
warps, register caps and backward segments (``triton_mlp.MLPConfig``;
``benchmarks/kernel_resources.py --mlp`` prints each one's registers and spills on the CPU). Times: median of CUDA-event timings after
warm-up; peak: ``max_memory_allocated`` over one forward+backward above what was allocated
before it (inputs included); ``diff``: relative L2 difference of the output and of dx from
the eager row's.

Writes a record (``benchmarks/records.py``) into ``--out`` (default ``$OUT``, else
``benchmarks/records/mlp/``).

    PYTHONPATH=$PWD python benchmarks/mlp.py            # the four rows
    PYTHONPATH=$PWD python benchmarks/mlp.py --sweep
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve
from benchmarks.records import add_out_argument, write_record
from flare_lightning.kernels import triton_mlp
from flare_lightning.models.mlp import ResidualMLP

MEASURES = ["flare_lightning/kernels/triton_mlp.py", "flare_lightning/kernels/triton_mlp_kernels.py",
            "flare_lightning/kernels/fused_mlp.py", "flare_lightning/models/mlp.py"]

DEFAULT = triton_mlp.default_config(64)
DEFAULTS = [(False, DEFAULT), (True, DEFAULT)]  # the two rows every run times: recompute, and kept inputs
ONE_KERNEL = replace(DEFAULT, split=False)  # the backward in one kernel a layer segment, dW summed in registers
SWEEP: list[tuple[bool, triton_mlp.MLPConfig]] = [  # (store_hidden, launch configuration) besides the defaults:
    # the one-kernel backward at its best launch, recomputing the chain or reading the kept inputs
    (False, ONE_KERNEL),
    (True, ONE_KERNEL),
    # ... from kept inputs: no chain to recompute, so its segments are light (stored_*: rows, warps,
    # layers per segment, programs per SM, register cap)
    (True, replace(ONE_KERNEL, stored_programs_per_sm=3, stored_maxnreg=168)),
    (True, replace(ONE_KERNEL, stored_programs_per_sm=6, stored_maxnreg=80)),
    (True, replace(ONE_KERNEL, stored_layers_per_segment=2, stored_programs_per_sm=3, stored_maxnreg=168)),
    (True, replace(ONE_KERNEL, stored_layers_per_segment=2, stored_programs_per_sm=4, stored_maxnreg=128)),
    (True, replace(ONE_KERNEL, stored_layers_per_segment=4, stored_programs_per_sm=2, stored_maxnreg=232)),
    (True, replace(ONE_KERNEL, stored_rows=128, stored_warps=8, stored_programs_per_sm=2, stored_maxnreg=128)),
    (True, replace(ONE_KERNEL, fwd_rows=128, fwd_warps=8, stored_layers_per_segment=2, stored_programs_per_sm=3,
                   stored_maxnreg=168)),
    # smaller row tiles: fewer registers a program, more programs an SM (sm_90, compiled on the CPU: 32 rows
    # 168-192 registers, 16 rows 124-162, no spills; 64 rows take 188-255, two programs an SM)
    (True, replace(ONE_KERNEL, stored_rows=32, stored_programs_per_sm=3)),
    (True, replace(ONE_KERNEL, stored_rows=16, stored_programs_per_sm=4)),
    (True, replace(ONE_KERNEL, stored_warps=8, stored_programs_per_sm=1)),
    # the split backward (the default): the row pass's tiles, warps and register cap (split_*), the
    # weight-gradient GEMM's rows, warps, pipeline stages and programs (dw_*)
    (True, replace(DEFAULT, split_rows=128, split_warps=8)),
    (False, replace(DEFAULT, split_rows=128, split_warps=8)),
    (True, replace(DEFAULT, split_rows=32)),
    (True, replace(DEFAULT, split_maxnreg=128)),
    (False, replace(DEFAULT, split_maxnreg=168)),
    (True, replace(DEFAULT, dw_rows=64)),
    (True, replace(DEFAULT, dw_rows=256, dw_warps=8)),
    (True, replace(DEFAULT, dw_programs_per_sm=4)),
    (True, replace(DEFAULT, dw_stages=4)),
]


def row_name(store_hidden: bool, cfg: triton_mlp.MLPConfig) -> str:
    """``fused [stored]`` and the launch fields that differ from the default configuration."""
    changed = [f"{f.name}={getattr(cfg, f.name)}" for f in fields(cfg) if getattr(cfg, f.name) != getattr(DEFAULT, f.name)
               and (store_hidden or not f.name.startswith("stored_"))]
    return " ".join(["fused stored" if store_hidden else "fused", *changed])


class FeedForward(nn.Module):
    """``x + mlp(norm(x))``: plain layers, or the fused kernels with ``fused``."""

    def __init__(self, width: int, layers: int, fused: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = ResidualMLP(width, width, width, layers)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.mlp.forward_fused(x, self.norm, residual=x)
        return x + self.mlp(self.norm(x))


def timed(fn, warmup: int = 3, reps: int = 20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measure(module: nn.Module, x: torch.Tensor, dout: torch.Tensor) -> dict:
    """Forward and forward+backward ms, peak GB of one forward+backward, output and dx."""
    def fwd():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return module(x)

    def step():
        out = fwd()
        (dx,) = torch.autograd.grad(out, x, dout)
        return out, dx

    fwd_ms = timed(lambda: fwd())
    step_ms = timed(step)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out, dx = step()
    torch.cuda.synchronize()
    return {"fwd_ms": fwd_ms, "fwd_bwd_ms": step_ms, "peak_gb": (torch.cuda.max_memory_allocated() - base) / 1e9,
            "out": out.float(), "dx": dx.float()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2**20)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3, help="hidden residual layers (FLARE: 3)")
    parser.add_argument("--sweep", action="store_true", help="time other launch configurations too")
    parser.add_argument("--only", nargs="+", metavar="REGEX",
                        help="with --sweep, only the configurations whose row name one of these regular expressions "
                             "finds (re.search: 'split=False$' picks the two one-kernel rows)")
    parser.add_argument("--no-compiled", action="store_true", help="leave out the torch.compile row (its compile is slow)")
    add_out_argument(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda")
    plain = FeedForward(args.width, args.layers, fused=False).to(device)
    fused = FeedForward(args.width, args.layers, fused=True).to(device)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(args.n, args.width, device=device, requires_grad=True)
    dout = torch.randn(args.n, args.width, device=device)

    rows = []
    ref = measure(plain, x, dout)
    rows.append(("torch eager", ref))
    if not args.no_compiled:
        compiled = FeedForward(args.width, args.layers, fused=False).to(device)
        compiled.load_state_dict(plain.state_dict())
        t0 = time.perf_counter()
        rows.append(("torch compiled", measure(torch.compile(compiled), x, dout)))
        print(f"compiled in {time.perf_counter() - t0:.0f} s", flush=True)
    sweep = [(store, cfg) for store, cfg in SWEEP
             if not args.only or any(re.search(pattern, row_name(store, cfg)) for pattern in args.only)] if args.sweep else []
    configs = [(store, None) for store, _ in DEFAULTS] + sweep  # None: default_config(width)
    for store_hidden, cfg in configs:
        triton_mlp.CONFIG_OVERRIDE = cfg
        fused.mlp.store_hidden = store_hidden
        launch = cfg or triton_mlp.default_config(args.width)
        name = row_name(store_hidden, launch) + (" (default launch)" if cfg is None else "")
        try:
            rows.append((name, measure(fused, x, dout) | {"store_hidden": store_hidden, "config": vars(launch)}))
        except Exception as err:  # a configuration that does not compile or launch: say so, go on
            print(f"{name}: {type(err).__name__}: {str(err)[:200]}", flush=True)
    triton_mlp.CONFIG_OVERRIDE = None

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    print(f"\nx + mlp(layer_norm(x)) at N = {args.n}, C = {args.width}, {args.layers} hidden layers, bf16 autocast, "
          f"{torch.cuda.get_device_name()}")
    print("| row | fwd ms | fwd+bwd ms | x eager | peak GB | diff out | diff dx |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for name, r in rows:
        d_out, d_dx = rel(r["out"], ref["out"]), rel(r["dx"], ref["dx"])
        print(f"| {name} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} | {ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:.1f} | "
              f"{r['peak_gb']:.2f} | {d_out:.1e} | {d_dx:.1e} |")
        table.append({"row": name, **{k: v for k, v in r.items() if k not in ("out", "dx")},
                      "diff_out": d_out, "diff_dx": d_dx})
    write_record("mlp", table, paths=MEASURES, out=args.out,
                 environment={"n": args.n, "width": args.width, "hidden_layers": args.layers})


if __name__ == "__main__":
    main()
