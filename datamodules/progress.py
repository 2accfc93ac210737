"""Progress bars (tqdm: counts, rate, ETA) for data generation and cache building, shown
on rank 0 only so that DDP runs print one bar, not one per process."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_rank_zero() -> bool:
    """True in the process that should talk: Lightning's rank-zero notion once Lightning
    has set it, otherwise the launcher's environment (torchrun, SLURM)."""
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    rank = getattr(getattr(rank_zero, "rank_zero_only", None), "rank", None)
    if rank is not None:
        return rank == 0
    return all(os.environ.get(v, "0") == "0" for v in _RANK_VARS)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``items`` wrapped in a tqdm bar on rank 0 (plain iteration elsewhere)."""
    return iter(tqdm(items, desc=desc, total=total, unit=unit, disable=not is_rank_zero(), dynamic_ncols=True))
