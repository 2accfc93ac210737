"""Where a training step's GPU time goes at 2^20 points, by kind of kernel.

The step is ``benchmarks/step.py``'s (``SurrogateModule`` as ``flare fit`` runs it: bf16 autocast,
masked relative L2, grad-clip, AdamW), one config at a time after warm-up; torch.profiler takes
the CUDA kernels of a few steps. Each kernel goes to one group (the fused MLPs' forward and
backward, the mixer's forward and backward, Inductor's generated kernels, cuBLAS GEMMs, ATen's
pointwise kernels, the optimizer, SDPA for the reference), and the record holds per config the
groups' milliseconds per step and share of kernel time, then the ``--top`` kernels. That is the
table to read before optimising the 1M step: which part has to shrink for a target step time.

    python benchmarks/step_kernels.py --latents 256 --configs ours-fused-compiled-stored reference-compiled
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve

from benchmarks.mixer import cuda_kernel_times  # noqa: E402
from benchmarks.records import add_out_argument, write_record  # noqa: E402
from benchmarks.step import CONFIGS, MEASURES, SHAPE, TrainStep, build, environment  # noqa: E402

# (group, pattern on the kernel name), first match wins; names as torch.profiler reports them.
GROUPS = (
    ("fused MLP backward", r"mlp_bwd_kernel|mlp_bwd_da_kernel|mlp_dw_kernel"),  # one kernel, or the split's two
    ("fused MLP forward", r"mlp_fwd_kernel"),
    ("mixer backward", r"_bwd_(decode|encode|latent_grad)_kernel|_dq_sum_kernel"),
    ("mixer forward", r"_encode_(partial|merge)_kernel|_decode_fwd_kernel"),
    ("SDPA (reference)", r"flash|fmha|efficient_attention|attention_kernel"),
    ("ATen LayerNorm", r"at::native::.*(layer_norm|GammaBeta)"),  # before the optimizer's *norm_kernel
    ("optimizer and clipping", r"multi_tensor|foreach|adam|_amp_|norm_kernel"),
    ("cuBLAS GEMM", r"gemm|xmma|cutlass|nvjet|sgemm|hgemm|Kernel2|splitKreduce"),
    ("Inductor kernels", r"^triton_"),
    ("ATen pointwise and reductions", r"elementwise|vectorized|reduce_kernel|CatArrayBatched|copy|fill|index|softmax"),
)


def group_of(kernel: str) -> str:
    """The group of a CUDA kernel name (``other`` when no pattern matches)."""
    for group, pattern in GROUPS:
        if re.search(pattern, kernel):
            return group
    return "other"


def breakdown(times: dict[str, list[float]], steps: int, top: int) -> list[dict]:
    """Rows of one config from kernel name -> device microseconds of each call over ``steps`` steps:
    one per group (ms per step, share of kernel time, calls per step), largest first, then the
    ``top`` kernels (``kernel`` names them)."""
    total_us = sum(sum(us) for us in times.values()) or 1.0
    groups: dict[str, list[float]] = defaultdict(list)
    for name, us in times.items():
        groups[group_of(name)].extend(us)
    rows = [{"group": g, "kernel": None, "ms_per_step": sum(us) / steps / 1e3, "share": sum(us) / total_us,
             "calls_per_step": len(us) / steps} for g, us in groups.items()]
    rows.sort(key=lambda r: -r["ms_per_step"])
    ranked = sorted(times.items(), key=lambda kv: -sum(kv[1]))[:top]
    rows += [{"group": group_of(name), "kernel": name[:80], "ms_per_step": sum(us) / steps / 1e3,
              "share": sum(us) / total_us, "calls_per_step": len(us) / steps} for name, us in ranked]
    return rows


def profile_config(name: str, n: int, device: torch.device, steps: int = 3, top: int = 12) -> list[dict]:
    """The kernel breakdown of ``steps`` training steps of config ``name`` after three warm-up steps."""
    step = TrainStep(build(name, device), n, device)
    for _ in range(2):
        step()
    times = cuda_kernel_times(step, calls=steps)  # one more warm-up step, then the profiled ones
    rows = [{"config": name, "n": n, "latents": SHAPE["num_latents"], **row} for row in breakdown(times, steps, top)]
    total = sum(r["ms_per_step"] for r in rows if r["kernel"] is None)
    print(f"--- {name}: {total:.1f} ms of kernels per step at N = {n}, M = {SHAPE['num_latents']}")
    for r in rows:
        label = r["kernel"] if r["kernel"] else f"[{r['group']}]"
        print(f"  {label[:70]:<72}{r['ms_per_step']:>9.2f} ms {100 * r['share']:>5.1f}% {r['calls_per_step']:>7.0f} calls")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2**20, help="points per sample")
    parser.add_argument("--latents", type=int, default=256, help="M latents per head")
    parser.add_argument("--configs", nargs="+", default=["ours-fused-compiled-stored", "reference-compiled"],
                        choices=list(CONFIGS))
    parser.add_argument("--top", type=int, default=12, help="kernels listed per config after the groups")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (the breakdown is of CUDA kernels)")
    SHAPE["num_latents"] = args.latents
    device = torch.device("cuda")
    rows = []
    for name in args.configs:
        rows += profile_config(name, args.n, device, top=args.top)
        torch.cuda.empty_cache()
    write_record("step_kernels", rows, paths=[*MEASURES, "benchmarks/step.py"], out=args.out,
                 environment=environment(device) | {"shape": dict(SHAPE)})
    return rows


if __name__ == "__main__":
    main()
