"""Training-step benchmark of the whole model (GitHub issue 5).

One command on one GPU prints, for the 8-block C=64 M=64 H=8 model at N = 2^20 points
(batch 1, bf16 autocast, loss in fp32, grad-clip 1.0, AdamW step), the median step time
(CUDA events, after warm-up) and the peak memory (``torch.cuda.max_memory_allocated``
over one step) of:

  reference     the paper's formulation (benchmarks/reference_flare.py): eager, two SDPA
  ours-fast     flare_lightning FLARE, mixer_backend="auto" (Triton kernels when present)
  ours-ckpt     ours-fast with checkpoint_blocks=True
  ours-memory   ours-fast with checkpoint_blocks=True and mlp_chunk_size=2^18
  ours-compiled ours-fast with compile=True (torch.compile of blocks, lifting, head)
  ours-fused    ours-fast with mlp_backend="triton" (fused MLP and LayerNorm kernels)
  ours-fused-compiled  ours-fused with compile=True

``--latents`` sets M (the shipped DrivAerML-1M config: 256; several, e.g. ``128 256``, time the
table at each in one run). ``--grid`` times the paper's Figure 4 instead (1M points, blocks
1/2/4/8 x latents 128-2048; time per 400-run epoch and peak memory): ``--configs`` picks the rows
(e.g. ``reference-compiled ours-fused``), ``--grid-blocks`` and ``--grid-latents`` a part of the grid
(each part its own record). ``--eval --n 8800000`` times the chunked evaluation of one
full-resolution DrivAerML-size surface without autograd.

All start from the same weights; the output of each is compared with the reference's. Each
run writes a record (``benchmarks/records.py``) into ``--out`` (default ``$OUT``, else
``benchmarks/records/step/``; ``--ddp``: ``step_ddp``) for ``benchmarks/render.py``.

    PYTHONPATH=$PWD python benchmarks/step.py                        # the table
    PYTHONPATH=$PWD torchrun --nproc_per_node 2 benchmarks/step.py --ddp   # DDP throughput
    PYTHONPATH=$PWD python benchmarks/step.py --device cpu --n 4096 --configs ours-fast  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve
from benchmarks.records import add_out_argument, write_record
from benchmarks.reference_flare import ReferenceSurrogate
from flare_lightning.training.metrics import relative_l2
from flare_lightning.models import FLARE
from flare_lightning.training.module import SurrogateModule

IN_DIM, OUT_DIM = 3, 1  # DrivAerML surface: xyz -> pressure
SHAPE = dict(channels=64, num_blocks=8, num_heads=8, num_latents=64)

CONFIGS: dict[str, dict] = {
    "reference": {},
    "reference-compiled": {},  # the authors' trainer compiles the model
    "ours-fast": dict(mixer_backend="auto"),
    "ours-ckpt": dict(mixer_backend="auto", checkpoint_blocks=True),
    "ours-memory": dict(mixer_backend="auto", checkpoint_blocks=True, mlp_chunk_size=2**18),
    "ours-compiled": dict(mixer_backend="auto", compile=True),  # last: compiling takes a while
    "ours-compiled-ckpt": dict(mixer_backend="auto", compile=True, checkpoint_blocks=True),
    "ours-fused": dict(mixer_backend="auto", mlp_backend="triton"),  # fused Triton MLPs and norms
    "ours-fused-compiled": dict(mixer_backend="auto", mlp_backend="triton", compile=True),
    # the fused MLPs keep their layers' inputs: a backward without recomputation, more memory
    "ours-fused-compiled-stored": dict(mixer_backend="auto", mlp_backend="triton", compile=True,
                                       mlp_store_hidden=True),
}
# The files whose change can move the step's numbers (the record's measured paths).
MEASURES = ["flare_lightning/models/", "flare_lightning/kernels/", "flare_lightning/training/module.py",
            "flare_lightning/training/metrics.py", "flare_lightning/training/normalizer.py", "benchmarks/reference_flare.py"]


def options(name: str) -> str:
    """A config's model options as the table names them."""
    if name.startswith("reference"):
        return "paper formulation, " + ("torch.compile" if name == "reference-compiled" else "eager")
    chosen = [k if v is True else f"{k}={v}" for k, v in CONFIGS[name].items() if k != "mixer_backend"]
    return ", ".join(chosen) or "(none)"


def build(name: str, device: torch.device) -> nn.Module:
    """The model of config ``name`` with the shared initial weights (seed 0)."""
    torch.manual_seed(0)
    ours = FLARE(IN_DIM, OUT_DIM, **SHAPE, **CONFIGS.get(name, {}))
    if name.startswith("reference"):
        s = SHAPE
        ref = ReferenceSurrogate(IN_DIM, OUT_DIM, s["channels"], s["num_blocks"], s["num_heads"], s["num_latents"],
                                 compile=name == "reference-compiled")
        ref.net.load_from(ours)
        return ref.to(device)
    return ours.to(device)


def mixer_backend_used(device: torch.device) -> str:
    """What ``mixer_backend="auto"`` resolves to on ``device`` (Triton may be absent)."""
    from flare_lightning.kernels import dispatch

    probe = torch.empty(1, 1, 1, 8, device=device)
    return dispatch.resolve_backend("auto", probe)


class TrainStep:
    """One training step of ``SurrogateModule`` on a fixed random sample of ``n`` points, as
    ``flare fit`` runs it: the module's normalisation, the model with the batch's mask, the
    masked relative-L2 loss in fp32 under bf16 autocast, backward, grad-clip 1.0, AdamW."""

    def __init__(self, model: nn.Module, n: int, device: torch.device, seed: int = 1) -> None:
        self.module = SurrogateModule(model, IN_DIM, OUT_DIM).to(device)
        self.module.input_norm.set_stats(torch.zeros(IN_DIM), torch.ones(IN_DIM))
        self.module.target_norm.set_stats(torch.zeros(OUT_DIM), torch.ones(OUT_DIM))
        self.model = model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator(device=device).manual_seed(seed)
        self.x = torch.rand(1, n, IN_DIM, device=device, generator=g) * 2 - 1
        self.y = torch.sin(3 * self.x[..., :1]) * self.x[..., 1:2] + self.x[..., 2:3] ** 2
        self.mask = torch.ones(1, n, dtype=torch.bool, device=device)
        self.device_type = device.type

    def __call__(self) -> float:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.module._forward_normalised(self.x, self.mask)
        loss = relative_l2(out, self.y, self.mask).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


def time_step(step: Callable[[], object], warmup: int = 3, budget_s: float = 4.0, reps: tuple = (5, 25)) -> dict:
    """Median step time (CUDA events) after ``warmup`` steps, and the peak memory of one step."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    times = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    while len(times) < reps[1] and (len(times) < reps[0] or time.perf_counter() - t0 < budget_s):
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return {"ms": times[len(times) // 2], "ms_min": times[0], "reps": len(times),
            "peak_gb": peak / 1e9, "resident_gb": base / 1e9}


@torch.no_grad()
def output_rel_diff(model: nn.Module, ref: nn.Module, device: torch.device, n: int = 2**16) -> float:
    """‖ours - reference‖ / ‖reference‖ of the outputs on one sample, both in bf16 autocast."""
    x = torch.rand(1, n, IN_DIM, device=device, generator=torch.Generator(device=device).manual_seed(7))
    with torch.autocast(device.type, dtype=torch.bfloat16):
        a, b = model(x).float(), ref(x).float()
    return ((a - b).norm() / b.norm()).item()


def run_table(names: list[str], n: int, device: torch.device) -> list[dict]:
    rows = []
    for name in names:
        row = {"config": name, "options": options(name), "n": n, "latents": SHAPE["num_latents"]}
        try:
            model = build(name, device)  # compared before any training step changes its weights
            row["rel_diff_vs_reference"] = output_rel_diff(model, build("reference", device), device)
            row.update(time_step(TrainStep(model, n, device)))
        except Exception as err:  # one failing config must not cost the others' numbers
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        model = None
        torch.cuda.empty_cache()
    return rows


def add_ratios(rows: list[dict]) -> list[dict]:
    """Each timed row's speed-up over, and memory relative to, the reference rows of the same run."""
    for base in ("reference", "reference-compiled"):
        ref = next((r for r in rows if r["config"] == base and "ms" in r), None)
        for r in rows:
            if ref is not None and "ms" in r:
                r[f"speedup_vs_{base.replace('-', '_')}"] = ref["ms"] / r["ms"]
                r[f"memory_vs_{base.replace('-', '_')}"] = r["peak_gb"] / ref["peak_gb"]
    return rows


def print_table(rows: list[dict]) -> None:
    ref = next((r for r in rows if r["config"] == "reference" and "ms" in r), None)
    print(f"\n{'config':<15}{'step ms':>10}{'speed-up':>10}{'peak GB':>10}{'mem/ref':>9}{'rel.diff':>10}")
    for r in rows:
        if "ms" not in r:
            print(f"{r['config']:<15}  failed: {r.get('error')}")
            continue
        speed = f"{ref['ms'] / r['ms']:.2f}x" if ref else "-"
        mem = f"{r['peak_gb'] / ref['peak_gb']:.3f}" if ref else "-"
        print(f"{r['config']:<15}{r['ms']:>10.1f}{speed:>10}{r['peak_gb']:>10.2f}{mem:>9}"
              f"{r.get('rel_diff_vs_reference', float('nan')):>10.1e}")


GRID_BLOCKS = (1, 2, 4, 8)
GRID_LATENTS = (128, 256, 512, 1024, 2048)
EPOCH_RUNS = 400  # DrivAerML training runs per epoch, one sample per step


EVAL_CHUNK = 2**20  # configs/drivaerml_1m.yaml's eval_chunk_size


@torch.no_grad()
def full_resolution(names: list[str], n: int, device: torch.device, reps: int = 3) -> list[dict]:
    """One sample of ``n`` points through each config's model without autograd, in chunks of
    ``EVAL_CHUNK`` points (the exact chunked evaluation of validation, test and predict), bf16
    autocast: median seconds of ``reps`` and the peak memory above the model and the input."""
    rows = []
    for name in names:
        row = {"config": name, "n": n, "latents": SHAPE["num_latents"], "chunk": EVAL_CHUNK}
        model = build(name, device).eval()
        if name.startswith("reference"):
            row["error"] = "the paper's formulation has no chunked evaluation"
        else:
            model.eval_chunk_size = EVAL_CHUNK
            x = torch.rand(1, n, IN_DIM, device=device, generator=torch.Generator(device=device).manual_seed(5))
            with torch.autocast(device.type, dtype=torch.bfloat16):
                model(x)  # warm-up: kernels compiled, memory pools filled
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    model(x)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
            row.update(seconds=sorted(times)[len(times) // 2], peak_gb=(torch.cuda.max_memory_allocated() - base) / 1e9)
        rows.append(row)
        print(json.dumps(row), flush=True)
        model = None
        torch.cuda.empty_cache()
    return rows


def grid(names: list[str], n: int, device: torch.device, blocks_list: tuple[int, ...] = GRID_BLOCKS,
         latents_list: tuple[int, ...] = GRID_LATENTS) -> list[dict]:
    """The paper's Figure 4 at ``n`` points: step time (-> epoch time) and peak memory per
    (blocks, latents) for each config, the model rebuilt per cell from the same seed; a part of
    the grid with ``blocks_list``/``latents_list`` (one call's time limit: compiles per cell)."""
    rows = []
    for blocks in blocks_list:
        for latents in latents_list:
            SHAPE.update(num_blocks=blocks, num_latents=latents)
            for name in names:
                row = {"config": name, "n": n, "blocks": blocks, "latents": latents}
                try:
                    row.update(time_step(TrainStep(build(name, device), n, device), warmup=2, budget_s=2.0, reps=(3, 10)))
                    row["epoch_s"] = EPOCH_RUNS * row["ms"] / 1e3
                except torch.OutOfMemoryError:
                    row["error"] = "out of memory"
                rows.append(row)
                print(json.dumps(row), flush=True)
                torch.cuda.empty_cache()
    print(f"\nFigure 4 at N = {n}: seconds per {EPOCH_RUNS}-run epoch (steps only) / peak GB")
    print("| blocks | latents | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for blocks in blocks_list:
        for latents in latents_list:
            cells = []
            for name in names:
                r = next(r for r in rows if (r["config"], r["blocks"], r["latents"]) == (name, blocks, latents))
                cells.append(f"{r['epoch_s']:.0f} s / {r['peak_gb']:.1f} GB" if "ms" in r else r["error"])
            print(f"| {blocks} | {latents} | " + " | ".join(cells) + " |")
    return rows


def ddp_throughput(n: int, out: str | None, steps: int = 15) -> None:
    """Run under torchrun: each rank trains ours-fast on its own sample of n points with
    DDP (NCCL); rank 0 prints points/s and samples/s over ``steps`` timed steps and records them."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    model = DDP(build("ours-fast", device), device_ids=[device.index])
    step = TrainStep(model, n, device, seed=1 + rank)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    seconds = time.perf_counter() - t0
    if rank == 0:
        row = {"world_size": world, "n_per_gpu": n, "steps": steps, "step_ms": 1e3 * seconds / steps,
               "samples_per_s": world * steps / seconds, "points_per_s": world * steps * n / seconds}
        print("DDP " + json.dumps(row), flush=True)
        write_record("step_ddp", [row], paths=MEASURES, out=out,
                     command=f"torchrun --nproc_per_node {world} benchmarks/step.py --ddp --n {n}")
    dist.destroy_process_group()


def diagnose(device: torch.device, n: int) -> None:
    """Where the step's time goes and whether the backends agree: each mixer backend's
    model output (bf16) against a float32 ``explicit`` forward, the mixer alone on the
    strided k/v the model passes against contiguous ones, and the top CUDA kernels of one
    training step of ``reference`` and ``ours-fast`` (torch.profiler)."""
    from flare_lightning.kernels import flare_mix

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    x = torch.rand(1, 2**14, IN_DIM, device=device, generator=torch.Generator(device=device).manual_seed(7))
    ours = build("ours-fast", device)
    with torch.no_grad():
        for mod in ours.modules():
            if hasattr(mod, "mixer_backend"):
                mod.mixer_backend = "explicit"
        exact = ours(x)
        for backend in ("triton", "chunked", "sdpa", "explicit"):
            for mod in ours.modules():
                if hasattr(mod, "mixer_backend"):
                    mod.mixer_backend = backend
            with torch.autocast(device.type, dtype=torch.bfloat16):
                print(f"model bf16 {backend:<9} vs fp32 explicit: {rel(ours(x), exact):.2e}")
        with torch.autocast(device.type, dtype=torch.bfloat16):
            print(f"model bf16 reference vs fp32 explicit: {rel(build('reference', device)(x), exact):.2e}")
        g = torch.Generator(device=device).manual_seed(3)
        q = torch.randn(8, 64, 8, device=device, generator=g) * 0.1
        kv = torch.randn(2, 1, 2**16, 64, device=device, generator=g)
        k, v = (t.view(1, 2**16, 8, 8).transpose(1, 2) for t in kv)  # the model's strided layout
        want = flare_mix(q, k, v, None, 1.0, "explicit")
        for layout, (kk, vv) in (("strided", (k, v)), ("contiguous", (k.contiguous(), v.contiguous()))):
            for backend in ("triton", "sdpa"):
                got = flare_mix(q.bfloat16(), kk.bfloat16(), vv.bfloat16(), None, 1.0, backend)
                print(f"mixer bf16 {backend:<7}{layout:<11} vs fp32 explicit: {rel(got, want):.2e}")
    from torch.profiler import ProfilerActivity, profile

    for name in ("reference", "ours-fast"):
        step = TrainStep(build(name, device), n, device)
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        print(f"--- {name}: top CUDA kernels of one step at N={n}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def environment(device: torch.device) -> dict:
    """What the record keeps beside card, commit and versions: which mixer ``auto`` ran."""
    return {"mixer_backend_auto": mixer_backend_used(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2**20, help="points per sample")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--latents", type=int, nargs="+", default=[SHAPE["num_latents"]],
                        help="M latents per head; several: the table at each M in one run (--eval uses the first)")
    parser.add_argument("--grid", action="store_true", help="the paper's Figure 4 grid instead of the table")
    parser.add_argument("--grid-blocks", type=int, nargs="+", default=list(GRID_BLOCKS),
                        help="with --grid: these block counts only (a part of the grid per run)")
    parser.add_argument("--grid-latents", type=int, nargs="+", default=list(GRID_LATENTS),
                        help="with --grid: these latent counts only")
    parser.add_argument("--eval", action="store_true",
                        help="time the chunked full-resolution evaluation of one --n-point sample instead")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ddp", action="store_true", help="DDP throughput mode (launch with torchrun)")
    parser.add_argument("--diagnose", action="store_true", help="backend agreement and a kernel profile")
    add_out_argument(parser)
    args = parser.parse_args()
    SHAPE["num_latents"] = args.latents[0]
    if args.ddp:
        ddp_throughput(args.n, args.out)
        return
    device = torch.device(args.device)
    if args.diagnose:
        diagnose(device, args.n)
        return
    if device.type != "cuda":  # smoke test: run each config once, no timing
        for name in args.configs:
            loss = TrainStep(build(name, device), args.n, device)()
            print(name, "loss", float(loss))
        return
    info = environment(device) | {"shape": dict(SHAPE)}
    if info["mixer_backend_auto"] != "triton":
        print("NOTE: the Triton mixer is not available here; 'auto' ran", info["mixer_backend_auto"])
    if args.grid:
        rows = grid(args.configs, args.n, device, tuple(args.grid_blocks), tuple(args.grid_latents))
        write_record("step_grid", rows, paths=MEASURES, out=args.out, environment=info)
        return
    if args.eval:
        write_record("step_eval", full_resolution(args.configs, args.n, device), paths=MEASURES, out=args.out,
                     environment=info)
        return
    rows = []
    for latents in args.latents:  # ratios within one M: the reference rows of the same size
        SHAPE["num_latents"] = latents
        table = add_ratios(run_table(args.configs, args.n, device))
        print(f"\nM = {latents}")
        print_table(table)
        rows += table
    write_record("step", rows, paths=MEASURES, out=args.out, environment=info)


if __name__ == "__main__":
    main()
