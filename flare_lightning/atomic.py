"""Crash-safe file writes: a temporary file in the destination folder, renamed into place,
with the permissions the umask gives ordinary files (``mkstemp`` alone makes them 0600)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

TEMP_SUFFIX = ".tmp"


def umask() -> int:
    """The process umask (read without changing it for longer than two calls)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_files(writes: Mapping[str | Path, Callable[[BinaryIO], Any]]) -> None:
    """Call each ``write(file)`` on a temporary file next to its path, then rename all.

    A crash while writing leaves none of the files (and no temporary file) behind, so a
    set of files that belong together is never left half-written or incomplete. The
    files get mode ``0o666 & ~umask``, like files made by ``open``.
    """
    temps: dict[Path, str] = {}
    try:
        for path, write in writes.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temps[path] = tempfile.mkstemp(dir=path.parent, prefix=temp_name(path), suffix=TEMP_SUFFIX)
            os.close(fd)  # reopened by name: the file object then names the file it writes
            with failed_write_names(path), open(temps[path], "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename makes it visible
            os.chmod(temps[path], 0o666 & ~umask())
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.remove(tmp)


@contextmanager
def failed_write_names(path: Path) -> Iterator[None]:
    """Re-raise a write that failed on an operating-system error (disk full, quota, I/O
    error), however the writer wrapped it (torch.save reports a full disk as "enforce fail
    ... unexpected pos"), as an ``OSError`` naming the file, the cause and the free space."""
    try:
        yield
    except Exception as err:
        cause = _os_error(err)
        if cause is None:
            raise
        free = shutil.disk_usage(path.parent).free
        full = " (the disk is full)" if cause.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise OSError(
            cause.errno, f"could not write {path}: {cause.strerror or cause}{full}; {free} bytes free in {path.parent}. "
            "The previous version of the file, if any, is kept"
        ) from err


def _os_error(err: BaseException) -> OSError | None:
    """The first ``OSError`` in an exception's chain of causes and contexts."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def temp_name(path: Path) -> str:
    """The prefix of ``path``'s temporary files: ``.<name>.`` (they end in ``.tmp``)."""
    return f".{path.name}."


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """``atomic_write_files`` for one file: ``path`` is the old file or complete, never partial."""
    atomic_write_files({path: write})
    return Path(path)


@contextmanager
def atomic_path(path: str | Path, suffix: str = TEMP_SUFFIX) -> Iterator[str]:
    """Yield a temporary file name beside ``path`` for writers that take a file name (VTK,
    ``torch.export``, ONNX); on success it is renamed to ``path`` with the umask's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_name(path), suffix=suffix)
    os.close(fd)
    try:
        with failed_write_names(path):
            yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes owner-only files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode())


def remove_stale_temps(folder: str | Path, pattern: str = f".*{TEMP_SUFFIX}") -> list[Path]:
    """Delete temporary files that a killed writer left in ``folder`` (``.<name>.*.tmp``);
    returns what was removed. Call it only where no other process is writing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.glob(pattern):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


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
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes an owner-only folder
    try:
        yield tmp
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
