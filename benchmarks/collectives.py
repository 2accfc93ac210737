"""Latency of one collective among the processes of one host: gloo against the shared-memory
exchange that context parallelism uses for host-staged collectives (issue 13).

A context-parallel step waits on ~26 small collectives (the encode joins, the latent
gradients, the loss sums) and one gradient all-reduce, so their latency is what separates
gloo's step from NCCL's. One command prints, for ``--procs`` processes on CPU tensors,
the mean time per call of each collective and size, and the ratio, and writes them as a record
(``benchmarks/records.py``):

    PYTHONPATH=$PWD python benchmarks/collectives.py                 # 2 processes
    PYTHONPATH=$PWD python benchmarks/collectives.py --procs 4 --reps 500 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.records import add_out_argument, cpu_name, write_record
from flare_lightning.parallel.host_exchange import exchange_for

# (name, collective, elements): sizes of the context-parallel step's collectives
# (8 heads x 64 latents x (8 + 1) fp32 per join; the loss' two sums; a 0.5M-parameter gradient)
CASES = [
    ("all_gather [lse, z] 18 KB", "all_gather", 8 * 64 * 9),
    ("all_reduce loss sums 8 B", "all_reduce", 2),
    ("all_reduce dz 16 KB", "all_reduce", 8 * 64 * 8),
    ("all_reduce gradients 2 MB", "all_reduce", 500_000),
]


def _time(fn, reps: int) -> float:
    for _ in range(max(3, reps // 10)):
        fn()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def _run(rank: int, world: int, init: str, reps: int, result: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    exchange = exchange_for(None)
    rows = []
    for name, kind, n in CASES:
        x = torch.randn(n)
        parts = [torch.empty_like(x) for _ in range(world)]
        if kind == "all_gather":
            gloo, shm = (lambda: dist.all_gather(parts, x)), (lambda: exchange.all_gather_(parts, x))
        else:
            gloo, shm = (lambda: dist.all_reduce(x)), (lambda: exchange.all_reduce_(x))
        row = {"collective": name, "gloo_ms": 1e3 * _time(gloo, reps)}
        row["exchange_ms"] = 1e3 * _time(shm, reps) if exchange is not None else None
        rows.append(row)
    if rank == 0:
        with open(result, "w") as fh:
            json.dump(rows, fh)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=2, help="processes of the group (one host)")
    parser.add_argument("--reps", type=int, default=200, help="timed calls per collective")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        init, result = os.path.join(tmp, "init"), os.path.join(tmp, "result.json")
        mp.start_processes(_run, args=(args.procs, init, args.reps, result), nprocs=args.procs, start_method="spawn")
        with open(result) as fh:
            rows = json.load(fh)
    print(f"\n{'collective':<28}{'gloo ms':>10}{'exchange ms':>13}{'gloo / exchange':>17}")
    for r in rows:
        shm = r["exchange_ms"]
        r["gloo_over_exchange"] = r["gloo_ms"] / shm if shm else None
        ratio = f"{r['gloo_over_exchange']:>16.1f}x" if shm else f"{'-':>17}"
        print(f"{r['collective']:<28}{r['gloo_ms']:>10.3f}{(shm if shm else float('nan')):>13.3f}{ratio}")
    write_record("collectives", rows, paths=["flare_lightning/parallel/host_exchange.py"], out=args.out, card=cpu_name(),
                 environment={"procs": args.procs, "reps": args.reps})
    return rows


if __name__ == "__main__":
    main()
