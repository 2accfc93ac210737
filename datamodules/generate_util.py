"""Plumbing shared by the data generators: crash-safe writes and a process-pool map
whose results do not depend on the number of workers."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

T = TypeVar("T")


def atomic_write_files(writes: Mapping[str | Path, Callable[[BinaryIO], Any]]) -> None:
    """Call each ``write(file)`` on a temporary file next to its path, then rename all.

    A crash while writing leaves none of the files (and no temporary file) behind, so a
    set of files that belong together is never left half-written or incomplete.
    """
    temps: dict[Path, str] = {}
    try:
        for path, write in writes.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temps[path] = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(temps[path], 0o666 & ~_umask())  # mkstemp makes owner-only files
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """``atomic_write_files`` for one file: ``path`` is the old file or complete, never partial."""
    atomic_write_files({path: write})


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it becomes ``path``.

    ``path`` must be absent or empty. On an exception the temporary folder is removed,
    so a crashed generation never leaves a partly filled ``path`` behind.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} already holds files; refusing to generate data into it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes an owner-only folder
    try:
        yield tmp
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def parallel_map(fn: Callable[[Any], T], items: Iterable[Any], workers: int = 1) -> list[T]:
    """``[fn(i) for i in items]``, in order, over ``workers`` spawned processes if > 1.

    ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one).
    Processes are spawned rather than forked: the parent may hold torch/OpenMP threads.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    workers = min(workers, len(items))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(fn, items, chunksize=max(1, len(items) // (4 * workers))))
