"""Run a function on several CPU processes joined by a gloo process group."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn: Callable, world: int, init_file: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_spawned(fn: Callable, world: int, *args) -> None:
    """``fn(rank, world, *args)`` on ``world`` forked processes; a worker's exception
    (assertion) is raised here with its traceback. Forked, not spawned: a child then starts
    in milliseconds instead of re-importing torch (seconds on a loaded 2-core machine);
    each child keeps to one thread."""
    fd, init_file = tempfile.mkstemp(prefix="gloo_init_")
    os.close(fd)
    os.remove(init_file)  # the file store creates it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        mp.start_processes(_entry, args=(fn, world, init_file, args), nprocs=world, join=True, start_method="fork")
    finally:
        if os.path.exists(init_file):
            os.remove(init_file)
