"""Fast content digests of raw files and of arrays, to key and verify caches on what the
data holds rather than on modification times (which a copy or ``touch`` can keep or fake).

A file's digest is recorded with its stamp (inode, size, mtime, ctime) in a memo beside the
cache, so it is computed once per file version, not once per run and rank.
Uses xxHash (XXH3-128, several GB/s) when the ``xxhash`` package is installed, else
BLAKE2b from the standard library; the algorithm is part of the digest string, so a
cache made with the other one is simply rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from flare_lightning.atomic import atomic_write_text

try:
    import xxhash
except ImportError:  # optional: hashlib's BLAKE2b is always there, ~3x slower
    xxhash = None

CHUNK = 16 << 20
ALGORITHM = "xxh3_128" if xxhash is not None else "blake2b"
_memo: dict[tuple, str] = {}


def hasher() -> Any:
    """A new hash object with ``update`` and ``hexdigest``."""
    return xxhash.xxh3_128() if xxhash is not None else hashlib.blake2b(digest_size=16)


def file_stamp(path: str | Path) -> tuple:
    """(resolved path, inode, size, mtime, ctime): what must not change for a digest to stand.
    ctime cannot be set by ``touch``/``utime``, so a rewritten file gets a new stamp."""
    path = Path(path)
    st = os.stat(path)
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_digest(path: str | Path, stamp: tuple | None = None) -> str:
    """Digest of a file's bytes, ``"<algorithm>:<hex>"``, memoised per process on its stamp
    (``file_stamp``, or the one given), so splits sharing a file hash it once."""
    stamp = file_stamp(path) if stamp is None else stamp
    if stamp not in _memo:
        h = hasher()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        _memo[stamp] = f"{ALGORITHM}:{h.hexdigest()}"
    return _memo[stamp]


def _memo_entries(memo_file: Path) -> dict:
    """The ``files`` entries of a digest memo of this algorithm; {} for a missing, unreadable or foreign one."""
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        return {}
    entries = memo.get("files") if isinstance(memo, dict) and memo.get("algorithm") == ALGORITHM else None
    return entries if isinstance(entries, dict) else {}


def file_digests(paths: Iterable[Path], memo_file: Path) -> dict[Path, str]:
    """Digests of ``paths``, reusing those recorded in ``memo_file`` for files whose stamp is
    unchanged, so later processes (every run, every DDP rank) need not read the raw files again;
    new digests are recorded (atomically; skipped where the folder is not writable). A memo that
    is missing, unreadable or of another algorithm is ignored."""
    entries = _memo_entries(memo_file)
    out, changed = {}, False
    for path in paths:
        stamp = file_stamp(path)
        entry = entries.get(stamp[0])
        if isinstance(entry, dict) and entry.get("stamp") == list(stamp) and isinstance(entry.get("digest"), str):
            _memo[stamp] = entry["digest"]
        else:
            entries[stamp[0]] = {"stamp": list(stamp), "digest": file_digest(path, stamp)}
            changed = True
        out[path] = _memo[stamp]
    if changed:
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(memo_file, json.dumps({"algorithm": ALGORITHM, "files": entries}, indent=1) + "\n")
        except OSError:
            pass  # a read-only data folder: hash again next time
    return out


def array_digest(arr: np.ndarray) -> str:
    """Digest of an array's dtype, shape and bytes (read through a memory map if it is one)."""
    arr = np.ascontiguousarray(arr)
    h = hasher()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    flat = arr.reshape(-1).view(np.uint8)
    for start in range(0, flat.size, CHUNK):
        h.update(flat[start : start + CHUNK].data)
    return f"{ALGORITHM}:{h.hexdigest()}"
