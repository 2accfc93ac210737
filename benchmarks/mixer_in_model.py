"""Why is the Triton mixer slower inside the model than alone? (issue 4/5 follow-up)

Times the Triton mixer forward and forward+backward at one N (median of CUDA events after
warm-up) for the same (H, D, M) with the inputs laid out and typed as the model passes
them, one difference at a time, then profiles the mixer's kernels inside a FlareAttention
layer under bf16 autocast. The times are written as a record (``benchmarks/records.py``).

    PYTHONPATH=$PWD python benchmarks/mixer_in_model.py [--n 1048576] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve
from benchmarks.records import add_out_argument, write_record
from flare_lightning.kernels import flare_mix
from flare_lightning.models import FlareAttention


def median_ms(fn, reps: int = 15) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def variants(h: int, d: int, m: int, n: int):
    """(name, q, k, v, mask) tuples differing from the plain case in one respect each."""
    dev, bf = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    q32 = (torch.randn(h, m, d, device=dev, generator=g) * 0.1).requires_grad_()
    base = torch.randn(2, 1, n, h * d, device=dev, generator=g, dtype=bf)
    strided = [t.view(1, n, h, d).transpose(1, 2).detach().requires_grad_() for t in base]
    contiguous = [t.contiguous().detach().requires_grad_() for t in strided]
    ones = torch.ones(1, n, dtype=torch.bool, device=dev)
    qb = q32.detach().to(bf).requires_grad_()
    yield "contiguous k/v, bf16 q", qb, *contiguous, None
    yield "strided k/v (model layout)", qb, *strided, None
    yield "strided + all-true mask", qb, *strided, ones
    yield "strided + fp32 q param", q32, *strided, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2**20)
    add_out_argument(parser)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  N={args.n}")
    print(f"{'(H,D,M)':<12}{'case':<30}{'fwd ms':>9}{'fwd+bwd ms':>12}")
    rows = []
    for h, d, m in ((8, 8, 64), (8, 16, 128)):
        for name, q, k, v, mask in variants(h, d, m, args.n):
            def fwd():
                with torch.no_grad():
                    flare_mix(q, k, v, mask, 1.0, "triton")

            def fwd_bwd():
                y = flare_mix(q, k, v, mask, 1.0, "triton")
                y.backward(torch.ones_like(y))

            rows.append({"H": h, "D": d, "M": m, "n": args.n, "case": name, "fwd_ms": median_ms(fwd),
                         "fwd_bwd_ms": median_ms(fwd_bwd)})
            print(f"{str((h, d, m)):<12}{name:<30}{rows[-1]['fwd_ms']:>9.2f}{rows[-1]['fwd_bwd_ms']:>12.2f}")
        attn = FlareAttention(h * d, h, m, mixer_backend="triton").cuda()
        x = torch.randn(1, args.n, h * d, device="cuda", requires_grad=True)

        def layer():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = attn(x)
            out.float().sum().backward()

        name = "FlareAttention fwd+bwd (autocast)"
        rows.append({"H": h, "D": d, "M": m, "n": args.n, "case": name, "fwd_ms": None, "fwd_bwd_ms": median_ms(layer)})
        print(f"{str((h, d, m)):<12}{name:<30}{'':>9}{rows[-1]['fwd_bwd_ms']:>12.2f}")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            layer()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
    write_record("mixer_in_model", rows, paths=["flare_lightning/kernels/", "flare_lightning/models/"], out=args.out)


if __name__ == "__main__":
    main()
