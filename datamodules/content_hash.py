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

from datamodules.progress import progress
from flare_lightning.atomic import atomic_write_text

try:
    import xxhash
except ImportError:  # optional: hashlib's BLAKE2b is always there, ~3x slower
    xxhash = None

CHUNK = 16 << 20
HASH_PROGRESS_BYTES = 1 << 30  # show a bar when hashing more raw data than this
DIGEST_MEMO = "raw_digests.json"  # in processed/: the raw files' digests with their stamps
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


class StampMemo:
    """Values recorded per file stamp (``file_stamp``) in a JSON file beside a cache, so that
    later processes (every run, every DDP rank) trust what was computed for an unchanged file
    instead of reading it again. A missing, unreadable or foreign memo (another algorithm)
    counts as empty; saving is atomic and skipped where the folder is not writable.

    Args:
        memo_file: the JSON file.
    """

    def __init__(self, memo_file: Path) -> None:
        self.memo_file = memo_file
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        entries = memo.get("files") if isinstance(memo, dict) and memo.get("algorithm") == ALGORITHM else None
        self.entries: dict = entries if isinstance(entries, dict) else {}
        self.changed = False

    def get(self, stamp: tuple) -> str | None:
        """The value recorded for this exact stamp, else None."""
        entry = self.entries.get(stamp[0])
        if isinstance(entry, dict) and entry.get("stamp") == list(stamp) and isinstance(entry.get("digest"), str):
            return entry["digest"]
        return None

    def put(self, stamp: tuple, value: str) -> None:
        self.entries[stamp[0]] = {"stamp": list(stamp), "digest": value}
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.memo_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.memo_file, json.dumps({"algorithm": ALGORITHM, "files": self.entries}, indent=1) + "\n")
        except OSError:
            pass  # a read-only data folder: compute again next time
        self.changed = False


def file_digests(paths: Iterable[Path], memo_file: Path) -> dict[Path, str]:
    """Digests of ``paths``, reusing those recorded in ``memo_file`` (a ``StampMemo``) for files
    whose stamp is unchanged, so later processes need not read the raw files again."""
    memo = StampMemo(memo_file)
    out = {}
    for path in paths:
        stamp = file_stamp(path)
        recorded = memo.get(stamp)
        if recorded is None:
            memo.put(stamp, file_digest(path, stamp))
        else:
            _memo[stamp] = recorded
        out[path] = _memo[stamp]
    memo.save()
    return out


def raw_file_digests(owner: str, root: Path, names: list[str]) -> dict[str, str]:
    """Digests of the raw files ``names`` (relative to ``root``), memoised in
    ``root/processed/raw_digests.json``; a progress bar when there is much to read."""
    paths = [root / f for f in names]
    shown = paths
    if sum(p.stat().st_size for p in paths) > HASH_PROGRESS_BYTES:
        shown = progress(paths, f"{owner}: hashing raw files", total=len(paths), unit="file")
    digests = file_digests(shown, root / "processed" / DIGEST_MEMO)
    return {f: digests[p] for f, p in zip(names, paths)}


def array_digest(arr: np.ndarray) -> str:
    """Digest of an array's dtype, shape and bytes (read through a memory map if it is one)."""
    arr = np.ascontiguousarray(arr)
    h = hasher()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    flat = arr.reshape(-1).view(np.uint8)
    for start in range(0, flat.size, CHUNK):
        h.update(flat[start : start + CHUNK].data)
    return f"{ALGORITHM}:{h.hexdigest()}"
