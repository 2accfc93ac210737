"""Benchmark of the FLARE mixer implementations (GitHub issue 4).

One command on a GPU prints, per (H, D, M) and N, the forward and forward+backward time
(median of CUDA-event timings after warm-up, L2 flushed before each timed call) and the
peak memory of a forward+backward (inputs and gradients included) for:

  sdpa     the paper's two-SDPA formulation (flash backend), the reference
  chunked  two SDPA calls with the decode folded over point chunks
  triton   the fused Triton kernels
  full     full softmax self-attention over the N points (flash), up to --full-max-n

with speed-ups over ``sdpa`` from the same run, and the relative difference of the
triton and chunked outputs and gradients from the reference's (a race check at scale). The
table is written as a record (``benchmarks/records.py``) into ``--out``, default ``$OUT``, else
``benchmarks/records/mixer/``.

    PYTHONPATH=$PWD python benchmarks/mixer.py                 # the issue-4 table
    PYTHONPATH=$PWD python benchmarks/mixer.py --profile       # per-kernel times at N = 2^20

Tile sizes are swept by ``benchmarks/mixer_tune.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve
from benchmarks.records import add_out_argument, write_record
from flare_lightning.kernels.chunked import flare_mix_chunked
from flare_lightning.kernels.reference import flare_mix_sdpa

SHAPES = [(8, 8, 64), (8, 16, 128), (16, 16, 256), (8, 16, 512)]  # (H, D, M)
NS = [2**14, 2**16, 2**18, 2**20, 2**22]
MEASURES = ["flare_lightning/kernels/"]  # the record's measured paths (the script adds itself)


def _full_attention(x, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(x, k, v)


class Timer:
    """Median of CUDA-event timings; the L2 is flushed before each timed call."""

    def __init__(self, budget_ms: float = 400.0, min_reps: int = 5, max_reps: int = 40):
        self.budget_ms, self.min_reps, self.max_reps = budget_ms, min_reps, max_reps
        self.flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")

    def __call__(self, run) -> float:
        for _ in range(2):
            run()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        reps = int(min(self.max_reps, max(self.min_reps, self.budget_ms / max(start.elapsed_time(end), 1e-3))))
        times = []
        for _ in range(reps):
            self.flush.zero_()
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        times.sort()
        return times[len(times) // 2]


def _inputs(h, d, m, n, seed=0, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(seed)
    kw = dict(device="cuda", dtype=dtype, generator=g)
    q = torch.randn(h, m, d, **kw).requires_grad_()
    k = torch.randn(1, h, n, d, **kw).requires_grad_()
    v = torch.randn(1, h, n, d, **kw).requires_grad_()
    dy = torch.randn(1, h, n, d, **kw)
    return q, k, v, dy


def measure(fn, args, dy, timer: Timer) -> dict:
    """fwd ms, fwd+bwd ms and peak MiB of fwd+bwd for ``fn(*args)``; 'OOM' on failure."""

    def clear():
        for t in args:
            t.grad = None

    def fwd():
        fn(*args)

    def fwd_bwd():
        clear()
        fn(*args).backward(dy)

    try:
        t_fwd = timer(fwd)
        t_fb = timer(fwd_bwd)
        clear()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn(*args).backward(dy)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    except torch.cuda.OutOfMemoryError:
        clear()
        torch.cuda.empty_cache()
        return {"fwd": None, "fwd_bwd": None, "peak_mib": None}
    clear()
    return {"fwd": t_fwd, "fwd_bwd": t_fb, "peak_mib": peak}


def rel_diff(fn, ref_out, args, dy) -> float:
    """Largest relative L2 difference of y, dq, dk, dv from the reference's."""
    for t in args:
        t.grad = None
    y = fn(*args)
    y.backward(dy)
    outs = [y.detach()] + [t.grad for t in args]
    for t in args:
        t.grad = None
    return max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(outs, ref_out))


def reference_outputs(args, dy):
    for t in args:
        t.grad = None
    y = flare_mix_sdpa(*args)
    y.backward(dy)
    outs = [y.detach()] + [t.grad.clone() for t in args]
    for t in args:
        t.grad = None
    return outs


def run_table(shapes, ns, full_max_n: int, timer: Timer) -> list[dict]:
    from flare_lightning.kernels.triton_mixer import flare_mix_triton

    rows = []
    for h, d, m in shapes:
        for n in ns:
            q, k, v, dy = _inputs(h, d, m, n)
            ref_out = reference_outputs((q, k, v), dy)
            methods = {"sdpa": flare_mix_sdpa, "chunked": flare_mix_chunked, "triton": flare_mix_triton}
            results = {}
            for name, fn in methods.items():
                results[name] = measure(fn, (q, k, v), dy, timer)
                results[name]["err"] = 0.0 if name == "sdpa" else rel_diff(fn, ref_out, (q, k, v), dy)
            del ref_out
            if n <= full_max_n:
                x = torch.randn_like(k).requires_grad_()
                results["full"] = measure(_full_attention, (x, k, v), dy, timer)
                results["full"]["err"] = None
                del x
            base = results["sdpa"]
            for name, r in results.items():
                row = {"H": h, "D": d, "M": m, "N": n, "method": name, **r}
                for key in ("fwd", "fwd_bwd"):
                    ok = r[key] is not None and base[key] is not None
                    row[f"x_{key}"] = base[key] / r[key] if ok else None
                rows.append(row)
                print(_fmt_row(row), flush=True)
            del q, k, v, dy
            torch.cuda.empty_cache()
    return rows


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


HEADER = (
    "| H | D | M | N | method | fwd ms | fwd+bwd ms | peak MiB | x fwd | x fwd+bwd | rel. diff |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def _fmt_row(r: dict) -> str:
    n = r["N"]
    n_txt = f"{n // 2**20}M" if n >= 2**20 else f"{n // 2**10}k"
    return (
        f"| {r['H']} | {r['D']} | {r['M']} | {n_txt} | {r['method']} | {_fmt(r['fwd'], '.3f')} | "
        f"{_fmt(r['fwd_bwd'], '.3f')} | {_fmt(r['peak_mib'], '.0f')} | {_fmt(r['x_fwd'], '.1f')} | "
        f"{_fmt(r['x_fwd_bwd'], '.1f')} | {_fmt(r.get('err'), '.1e')} |"
    )


def cuda_kernel_times(run, calls: int = 5) -> dict[str, list[float]]:
    """CUDA microseconds of every kernel launch over ``calls`` calls of ``run`` (torch.profiler),
    by kernel name; ``run`` is called once before, untimed."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
    times: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            times.setdefault(e.name, []).append(e.time_range.elapsed_us())
    return times


def profile(shapes, n: int, calls: int = 5) -> None:
    """Per-kernel CUDA time of one triton fwd+bwd, to see where time goes."""
    from flare_lightning.kernels.triton_mixer import flare_mix_triton

    for h, d, m in shapes:
        q, k, v, dy = _inputs(h, d, m, n)
        times = cuda_kernel_times(lambda: flare_mix_triton(q, k, v).backward(dy), calls)
        print(f"profile H{h} D{d} M{m} N{n} ({calls} fwd+bwd, us per call)")
        for name, ts in sorted(times.items(), key=lambda kv: -sum(kv[1]))[:10]:
            print(f"  {name[:60]:60s} {sum(ts) / calls:9.1f}")
        del q, k, v, dy


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns", default=",".join(str(int(math.log2(n))) for n in NS), help="log2 of N, comma separated")
    p.add_argument("--shapes", default=None, help="H:D:M triples, comma separated (default: the issue's four)")
    p.add_argument("--full-max-n", type=int, default=2**18, help="largest N timed for full attention")
    p.add_argument("--profile", action="store_true", help="per-kernel times at N = 2^20 instead")
    add_out_argument(p)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/mixer.py needs a CUDA GPU")
    shapes = SHAPES if args.shapes is None else [tuple(int(x) for x in s.split(":")) for s in args.shapes.split(",")]
    ns = [2 ** int(x) for x in args.ns.split(",")]
    props = torch.cuda.get_device_properties(0)
    env = {"sms": props.multi_processor_count, "dtype": "bf16", "batch": 1, "scale": 1.0, "mask": False}
    print(f"{props.name}, {props.multi_processor_count} SMs | bf16, B=1, scale 1.0, no mask", flush=True)
    timer = Timer()
    if args.profile:
        profile(shapes, 2**20)
        return
    print(HEADER, flush=True)
    rows = run_table(shapes, ns, args.full_max_n, timer)
    print("\n" + HEADER)
    for r in rows:
        print(_fmt_row(r))
    write_record("mixer", rows, paths=MEASURES, out=args.out, environment=env)


if __name__ == "__main__":
    main()
