"""Context parallelism on the GPUs of one host (GitHub issue 13): one sample's points split
over G GPUs, against the same model on one GPU.

One command prints, for the 8-block C=64 M=64 H=8 model of ``benchmarks/step.py`` (batch 1,
bf16 autocast, relative-L2 loss in fp32, grad-clip 1.0, AdamW; the Triton mixer):

  check      fp32 forward + backward at N = 2^15 on G GPUs against the whole sample on one:
             output and gradients (relative L2 difference; exact up to rounding)
  step ms    median step time at N = 2^22 (``--n-time``) with ``checkpoint_blocks`` (ours-ckpt:
             2^22 points do not fit on one GPU without it), on 1 and on G GPUs
  largest N  the largest N per sample that trains with ``checkpoint_blocks`` and
             ``mlp_chunk_size`` = 2^18 (ours-memory), on 1 and on G GPUs: peak memory is
             measured at two sizes, the limit predicted from that straight line, and a step
             is run there (stepping down 4% per failure) to prove it trains

Each rank holds only its share of the sample's points (inputs, targets, activations); the
loss sums squares over all ranks (``relative_l2_sharded``), the gradients are averaged over
ranks as DDP does. Phases run in spawned processes (NCCL), one after another. The table is
written as a record (``benchmarks/records.py``; a ``--dry-run`` only with ``--out``).

    PYTHONPATH=$PWD python benchmarks/context_parallel.py                  # 1 vs 2 GPUs, the table
    PYTHONPATH=$PWD python benchmarks/context_parallel.py --gpus 4 --out $OUT
    PYTHONPATH=$PWD python benchmarks/context_parallel.py --backend gloo   # no NCCL memory on the GPUs
    PYTHONPATH=$PWD python benchmarks/context_parallel.py --dry-run        # CPU, gloo, tiny N, simulated memory
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve
from benchmarks.records import add_out_argument, cpu_name, write_record
from flare_lightning.training.metrics import relative_l2
from flare_lightning.models import FLARE
from flare_lightning.parallel import ContextGroup, attach_context, relative_l2_sharded
from flare_lightning.parallel.nccl import use_small_nccl_buffers
from flare_lightning.parallel.staging import all_reduce_, transport

IN_DIM, OUT_DIM = 3, 1
SHAPE = dict(channels=64, num_blocks=8, num_heads=8, num_latents=64)
TINY_SHAPE = dict(channels=16, num_blocks=2, num_heads=2, num_latents=8)  # --dry-run
MEASURES = ["flare_lightning/models/", "flare_lightning/kernels/", "flare_lightning/parallel/", "flare_lightning/training/metrics.py"]
CONFIGS = {
    "ours-ckpt": dict(checkpoint_blocks=True),
    "ours-memory": dict(checkpoint_blocks=True, mlp_chunk_size=2**18),
}


def sample(n: int, device: torch.device, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random sample on every rank: x [1, n, 3] in [-1, 1]^3, y [1, n, 1]."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(1, n, IN_DIM, device=device, generator=g) * 2 - 1
    return x, torch.sin(3 * x[..., :1]) * x[..., 1:2] + x[..., 2:3] ** 2


class ShardedStep:
    """One training step on this rank's share of one n-point sample (the whole sample
    without a context group)."""

    def __init__(self, model: nn.Module, n: int, device: torch.device, context: ContextGroup | None) -> None:
        self.model, self.context = model, context
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x, y = sample(n, device)
        self.mask = None
        if context is not None:  # keep only this rank's share: nothing per point is replicated
            x, self.mask = context.shard(x, None)
            y, _ = context.shard(y, None)
            x, y = x.clone(), y.clone()
        self.x, self.y = x, y
        self.device_type = device.type

    def __call__(self) -> None:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.model(self.x, self.mask)
        group = None if self.context is None else self.context.group
        if self.context is None:
            loss = relative_l2(out.float(), self.y).mean()
        else:
            loss = relative_l2_sharded(out.float(), self.y, self.mask, group).mean()
        loss.backward()
        average_gradients(self.model)
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def average_gradients(model: nn.Module) -> None:
    """Mean of the gradients over all ranks in one flat all-reduce (what DDP does)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    all_reduce_(flat)
    flat /= dist.get_world_size()
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def build(config: str, device: torch.device, shape: dict, context: ContextGroup | None) -> nn.Module:
    torch.manual_seed(0)
    model = FLARE(IN_DIM, OUT_DIM, **shape, mixer_backend="auto", **CONFIGS[config]).to(device)
    if context is not None:
        attach_context(model, context, whole_samples=False)
    return model


class Memory:
    """Peak memory of a step, and out-of-memory detection; on CPU (``--dry-run``) a
    simulated card holding ``capacity`` points per rank at ``1e3`` bytes per point."""

    def __init__(self, device: torch.device, capacity: int | None = None) -> None:
        self.device, self.capacity = device, capacity

    def usable(self) -> float:
        """Bytes this process can allocate: free memory plus what PyTorch's cache holds (the
        CUDA context and NCCL buffers are already taken out)."""
        if self.device.type != "cuda":
            return 1e5 + 1e3 * self.capacity
        free, _ = torch.cuda.mem_get_info(self.device)
        return float(free + torch.cuda.memory_reserved(self.device))

    def run(self, make_step, points_per_rank: int) -> float | None:
        """Peak bytes of one step (None: out of memory), agreed between ranks."""
        ok, peak = True, 0.0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            if self.capacity is not None and points_per_rank > self.capacity:
                raise torch.OutOfMemoryError("simulated (--dry-run)")
            step = make_step()
            step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                peak = float(torch.cuda.max_memory_allocated(self.device))
            else:
                peak = 1e5 + 1e3 * points_per_rank
            del step
        except torch.OutOfMemoryError:
            ok = False
        except RuntimeError as err:  # some kernels report OOM as a plain RuntimeError
            if "out of memory" not in str(err).lower():
                raise
            ok = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        flag = torch.tensor([1.0 if ok else 0.0, peak], device=self.device)
        if dist.is_initialized():
            all_reduce_(flag, dist.ReduceOp.MIN)
        return float(flag[1]) if flag[0] > 0 else None


def largest_n(config: str, device: torch.device, shape: dict, context: ContextGroup | None,
              memory: Memory, probe: int, grain: int, budget_s: float) -> dict:
    """Largest N (a multiple of ``grain``) whose training step fits, from a linear memory model."""
    world = 1 if context is None else context.size
    model = build(config, device, shape, context)
    t0 = time.perf_counter()

    def attempt(n: int) -> float | None:
        for p in model.parameters():
            p.grad = None
        return memory.run(lambda: ShardedStep(model, n, device, context), -(-n // world))

    sizes = (probe * world, 2 * probe * world)
    peaks = [attempt(n) for n in sizes]
    if None in peaks:
        return {"config": config, "error": f"out of memory already at N = {sizes}"}
    per_point = (peaks[1] - peaks[0]) / (sizes[1] - sizes[0])
    fixed = peaks[0] - per_point * sizes[0]
    predicted = int((0.985 * memory.usable() - fixed) / per_point)
    n, tries = predicted // grain * grain, []
    while time.perf_counter() - t0 < budget_s and n > sizes[1]:
        peak = attempt(n)
        tries.append((n, peak))
        if peak is not None:
            break
        n = int(n * 0.96) // grain * grain
    best = max((t for t in tries if t[1] is not None), default=(sizes[1], peaks[1]))
    return {"config": config, "max_n": best[0], "peak_gb": best[1] / 1e9, "predicted_n": predicted,
            "bytes_per_point": per_point, "fixed_gb": fixed / 1e9, "tries": tries,
            "proved": bool(tries and tries[-1][1] is not None), "seconds": round(time.perf_counter() - t0, 1)}


def step_time(config: str, n: int, device: torch.device, shape: dict, context: ContextGroup | None,
              warmup: int = 2, reps: int = 5) -> dict:
    """Median over ``reps`` steps (the same count on every rank: the steps hold collectives)."""
    model = build(config, device, shape, context)
    step = ShardedStep(model, n, device, context)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if dist.is_initialized():
            dist.barrier()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return {"config": config, "n": n, "ms": statistics.median(times), "ms_min": min(times), "reps": reps}


def exactness(n: int, device: torch.device, shape: dict, context: ContextGroup) -> dict:
    """fp32 output and mean gradients on the group against the whole sample on this GPU."""
    torch.manual_seed(0)
    whole = FLARE(IN_DIM, OUT_DIM, **shape, mixer_backend="auto").to(device)
    split = copy.deepcopy(whole)
    attach_context(split, context, whole_samples=False)
    x, y = sample(n, device)
    out_ref = whole(x)
    relative_l2(out_ref, y).mean().backward()
    x_loc, mask = context.shard(x, None)
    y_loc, _ = context.shard(y, None)
    out = split(x_loc, mask)
    relative_l2_sharded(out, y_loc, mask, context.group).mean().backward()
    average_gradients(split)
    lo, hi, _ = context.share(n)
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.detach() - b.detach()).norm() / b.detach().norm())

    grads = [rel(p.grad, q.grad) for p, q in zip(split.parameters(), whole.parameters())]
    worst = torch.tensor([rel(out[:, : hi - lo], out_ref[:, lo:hi]), max(grads)], device=device)
    all_reduce_(worst, dist.ReduceOp.MAX)
    return {"n": n, "output_rel_diff": float(worst[0]), "max_grad_rel_diff": float(worst[1])}


def phase(rank: int, world: int, args: argparse.Namespace, init_file: str, result_file: str) -> None:
    """Everything measured on ``world`` GPUs (one process per GPU)."""
    cpu = args.dry_run
    device = torch.device("cpu") if cpu else torch.device("cuda", rank)
    if not cpu and args.isolate_devices:  # this process sees its own GPU only, as device 0
        if torch.cuda.is_initialized():
            raise RuntimeError("--isolate-devices: CUDA was initialised before the rank chose its GPU")
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu_ids[rank]
        device = torch.device("cuda", 0)
    if not cpu:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    context = None
    if world > 1:
        backend = "gloo" if cpu else args.backend
        if backend == "nccl" and args.small_nccl_buffers:  # as ContextParallelStrategy does (parallel/nccl.py)
            use_small_nccl_buffers()
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=args.timeout_s))
        context = ContextGroup()
    shape = TINY_SHAPE if cpu else SHAPE
    memory = Memory(device, capacity=args.dry_capacity if cpu else None)
    out: dict = {"gpus": world}
    try:
        if context is not None:
            out["check"] = exactness(args.n_check, device, shape, context)
            out["transport"] = transport(torch.zeros(1, device=device), context.group)
        out["step"] = step_time("ours-ckpt", args.n_time, device, shape, context)
        out["largest"] = largest_n("ours-memory", device, shape, context, memory, args.probe, args.grain, args.budget_s)
    finally:
        if rank == 0:
            with open(result_file, "w") as f:
                json.dump(out, f)
        if dist.is_initialized():
            dist.destroy_process_group()


def run_phase(world: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        init = os.path.join(tmp, "init")
        method = "fork" if args.dry_run else "spawn"  # CUDA needs spawn; fork starts fast on CPU
        mp.start_processes(phase, args=(world, args, init, result), nprocs=world, join=True, start_method=method)
        with open(result) as f:
            return json.load(f)


def add_ratios(rows: list[dict], backend: str) -> list[dict]:
    """Each phase's collectives backend (none on one GPU), and its step's speed-up and largest N
    against the one-GPU phase of the same run."""
    one = rows[0]
    for r in rows:
        r["backend"] = backend if r["gpus"] > 1 else None
        r["speedup"] = one["step"]["ms"] / r["step"]["ms"]
        if "max_n" in r["largest"] and "max_n" in one["largest"]:
            r["points_vs_one_gpu"] = r["largest"]["max_n"] / one["largest"]["max_n"]
    return rows


def print_table(rows: list[dict]) -> None:
    one = rows[0]
    print(f"\n{'GPUs':>4}{'step ms (2^%d)' % (one['step']['n'].bit_length() - 1):>16}{'speed-up':>10}"
          f"{'largest N':>14}{'x one GPU':>10}{'peak GB':>9}  check (out / grad rel. diff)")
    for r in rows:
        step, big = r["step"], r["largest"]
        speed = one["step"]["ms"] / step["ms"]
        if "max_n" in big:
            ratio = big["max_n"] / one["largest"]["max_n"] if "max_n" in one["largest"] else float("nan")
            tail = f"{big['max_n']:>14,d}{ratio:>9.2f}x{big['peak_gb']:>9.1f}"
            tail += "" if big["proved"] else " (not proved)"
        else:
            tail = f"  {big.get('error')}"
        check = r.get("check")
        check = f"  {check['output_rel_diff']:.1e} / {check['max_grad_rel_diff']:.1e}" if check else "  -"
        print(f"{r['gpus']:>4}{step['ms']:>16.1f}{speed:>9.2f}x{tail}{check}")
    for r in rows[1:]:
        print(f"collectives of the {r['gpus']}-GPU group: {r.get('transport', '?')}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=2, help="GPUs of the context group (compared with one)")
    parser.add_argument("--n-time", type=int, help="points of the timed step (2^22; --dry-run 2^8)")
    parser.add_argument("--n-check", type=int, help="points of the fp32 exactness check (2^15; --dry-run 2^7)")
    parser.add_argument("--probe", type=int, help="points per rank of the first memory probe (2^22; --dry-run 2^7)")
    parser.add_argument("--grain", type=int, help="largest N is a multiple of this (2^16; --dry-run 2^5)")
    parser.add_argument("--budget-s", type=float, default=150.0, help="time for the largest-N search per phase")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="collective timeout (an asymmetric OOM)")
    add_out_argument(parser)
    parser.add_argument("--isolate-devices", action="store_true",
                        help="each rank sees only its own GPU (CUDA_VISIBLE_DEVICES): no thread of it can "
                             "open a CUDA context on another rank's GPU")
    parser.add_argument("--backend", choices=["nccl", "gloo"], default="nccl",
                        help="collectives of the G-GPU phase: gloo stages CUDA tensors through host memory, so no "
                             "communicator takes GPU memory (the strategy's process_group_backend)")
    parser.add_argument("--nccl-default-buffers", dest="small_nccl_buffers", action="store_false",
                        help="keep NCCL's default buffers (the strategy's small_nccl_buffers=False)")
    parser.add_argument("--dry-run", action="store_true", help="CPU + gloo, tiny model and N, simulated memory")
    parser.add_argument("--dry-capacity", type=int, default=3000, help="--dry-run: points per rank that 'fit'")
    args = parser.parse_args(argv)
    defaults = (2**8, 2**7, 2**7, 2**5) if args.dry_run else (2**22, 2**15, 2**22, 2**16)
    for key, value in zip(("n_time", "n_check", "probe", "grain"), defaults):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.dry_run and torch.cuda.device_count() < args.gpus:
        raise SystemExit(f"--gpus {args.gpus}: only {torch.cuda.device_count()} CUDA devices visible")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    args.gpu_ids = visible.split(",") if visible else [str(i) for i in range(args.gpus)]
    rows = []
    for world in (1, args.gpus):
        rows.append(run_phase(world, args))
        print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    add_ratios(rows, "gloo" if args.dry_run else args.backend)
    if args.out or not args.dry_run:
        environment = {"args": vars(args), "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
        write_record("context_parallel", rows, paths=MEASURES, out=args.out, environment=environment,
                     card=cpu_name() if args.dry_run else None)
    return rows


if __name__ == "__main__":
    main()
