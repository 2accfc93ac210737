"""A process-pool map for the data generators whose results do not depend on the number
of workers, with a progress bar on rank 0."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from datamodules.malloc import fixed_mmap_threshold
from datamodules.progress import progress

T = TypeVar("T")


def parallel_map(fn: Callable[[Any], T], items: Iterable[Any], workers: int = 1, desc: str = "generating") -> list[T]:
    """``[fn(i) for i in items]``, in order, over ``workers`` spawned processes if > 1.

    ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one).
    Processes are spawned rather than forked: the parent may hold torch/OpenMP threads.
    A tqdm bar named ``desc`` counts finished items (rank 0 only).
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in progress(items, desc, total=len(items))]
    workers = min(workers, len(items))
    context = multiprocessing.get_context("spawn")
    # a process holds one item at a time: freed ones go back to the OS (datamodules/malloc.py)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=fixed_mmap_threshold) as pool:
        results = pool.map(fn, items, chunksize=max(1, len(items) // (4 * workers)))
        return list(progress(results, desc, total=len(items)))
