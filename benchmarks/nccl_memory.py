"""Device memory an NCCL communicator takes, per setting: what a context group pays per GPU.

A context-parallel run fits twice the points of one GPU only if the communicator costs (next
to) nothing: at 2 x 40M points every 0.1 GB is 55k points. Each setting starts a fresh pair of
processes, reads each GPU's free memory after CUDA is up, then after ``init_process_group``
and the collectives of one context-parallel step (a [B, H, M, D+2] all-reduce per block and
the gradients' all-reduce), and prints the drop (the larger of the two ranks); the drops are
written as a record (``benchmarks/records.py``; a ``--dry-run`` only with ``--out``).

    PYTHONPATH=$PWD python benchmarks/nccl_memory.py                 # 2 GPUs, every setting
    python benchmarks/nccl_memory.py --dry-run       # CPU + gloo: the harness only (drops are 0)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve
from benchmarks.records import add_out_argument, cpu_name, write_record
from flare_lightning.parallel.nccl import SMALL_COLLECTIVES

SETTINGS: dict[str, dict[str, str]] = {
    "nccl-default": {},
    "small-buffers (default of ContextParallelStrategy)": dict(SMALL_COLLECTIVES),
    "small + simple protocol": {**SMALL_COLLECTIVES, "NCCL_PROTO": "Simple"},
    "small + 1 channel": {**SMALL_COLLECTIVES, "NCCL_MAX_NCHANNELS": "1"},
    "small + no cuMem": {**SMALL_COLLECTIVES, "NCCL_CUMEM_ENABLE": "0"},
    "small + no P2P (host shared memory)": {**SMALL_COLLECTIVES, "NCCL_P2P_DISABLE": "1"},
}
BLOCK_SHAPE = (1, 8, 256, 8 + 2)  # [B, H, M, D+2] of the 1M-point config
GRAD_ELEMENTS = 700_000  # the C=64, 8-block model's parameters
KEYS = sorted({key for env in SETTINGS.values() for key in env})  # cleared before each setting


def _free(device: torch.device) -> int:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0


def worker(rank: int, world: int, env: dict[str, str], init: str, out: str, cpu: bool) -> None:
    for key in KEYS:
        os.environ.pop(key, None)
    os.environ.update(env)
    device = torch.device("cpu") if cpu else torch.device("cuda", rank)
    if not cpu:
        torch.cuda.set_device(device)
        torch.zeros(1, device=device)  # the CUDA context, before NCCL
    before = _free(device)
    dist.init_process_group("gloo" if cpu else "nccl", init_method=f"file://{init}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    for _ in range(8):  # one context-parallel step: per block the encode merge, then the gradients
        dist.all_reduce(torch.ones(BLOCK_SHAPE, device=device), op=dist.ReduceOp.MAX)
        dist.all_reduce(torch.ones(BLOCK_SHAPE, device=device))
    dist.all_reduce(torch.ones(GRAD_ELEMENTS, device=device))
    if not cpu:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    drop = torch.tensor([float(before - _free(device))], device=device)
    dist.all_reduce(drop, op=dist.ReduceOp.MAX)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"drop_gb": float(drop) / 1e9, "env": {k: os.environ[k] for k in KEYS if k in os.environ}}, f)
    dist.destroy_process_group()


def measure(env: dict[str, str], world: int, cpu: bool) -> dict:
    """{"drop_gb": free-memory drop of the worse rank, "env": the NCCL variables it ran with}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        # spawn also on the CPU: a forked child of a process that already ran torch work can hang
        mp.start_processes(worker, args=(world, env, os.path.join(tmp, "init"), out, cpu), nprocs=world,
                           join=True, start_method="spawn")
        with open(out) as f:
            return json.load(f)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--dry-run", action="store_true", help="CPU + gloo: check the harness")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    clash = [key for key in KEYS if key in os.environ]
    if clash:
        print(f"note: {clash} set here are cleared for every setting's run")
    rows = {}
    print(f"{'setting':<52}{'GB per GPU':>11}")
    for name in args.settings:
        rows[name] = measure(SETTINGS[name], args.gpus, args.dry_run)
        print(f"{name:<52}{rows[name]['drop_gb']:>11.3f}", flush=True)
    if args.out or not args.dry_run:
        write_record("nccl_memory", [{"setting": name, **row} for name, row in rows.items()],
                     paths=["flare_lightning/parallel/nccl.py"], out=args.out, card=cpu_name() if args.dry_run else None,
                     environment={"gpus": args.gpus})
    return rows


if __name__ == "__main__":
    main()
