"""Whether a run folder is in use: the command writing there holds an exclusive ``flock``
on ``<run>/.lock`` until it ends (the kernel drops it when the process dies, so a killed
run never stays "in use"). ``--ckpt_path best|last`` and resuming refuse a run in use."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK = ".lock"
# Filesystems without flock (some network mounts) answer these: no lock, no refusal.
UNSUPPORTED = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)


class RunInUseError(RuntimeError):
    """Another flare process is writing into this run folder."""


def hold(folder: Path) -> int | None:
    """Lock ``folder`` for this process: the descriptor to ``release``, None where the
    filesystem has no locks. Raises ``RunInUseError`` when another process holds it."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in UNSUPPORTED:
            return None
        raise RunInUseError(f"run folder {folder} is in use by another flare command (a fit still training?)") from err
    return fd


def release(folder: Path, fd: int | None) -> None:
    """Drop the lock taken by ``hold`` and its file."""
    if fd is None:
        return
    (folder / LOCK).unlink(missing_ok=True)
    os.close(fd)


def in_use(folder: Path) -> bool:
    """Whether another process holds ``folder``'s lock right now."""
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno not in UNSUPPORTED
    finally:
        os.close(fd)
    return False
