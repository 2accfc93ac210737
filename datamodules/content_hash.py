"""Fast content digests of raw files and of arrays, to key and verify caches on what the
data holds rather than on modification times (which a copy or ``touch`` can keep or fake).

Uses xxHash (XXH3-128, several GB/s) when the ``xxhash`` package is installed, else
BLAKE2b from the standard library; the algorithm is part of the digest string, so a
cache made with the other one is simply rebuilt.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

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


def file_digest(path: str | Path) -> str:
    """Digest of a file's bytes, ``"<algorithm>:<hex>"``.

    Memoised per process on (inode, size, mtime, ctime), so splits sharing a file hash it
    once; ctime cannot be set by ``touch``/``utime``, so a rewritten file is hashed again.
    """
    path = Path(path)
    st = os.stat(path)
    stamp = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if stamp not in _memo:
        h = hasher()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        _memo[stamp] = f"{ALGORITHM}:{h.hexdigest()}"
    return _memo[stamp]


def array_digest(arr: np.ndarray) -> str:
    """Digest of an array's dtype, shape and bytes (read through a memory map if it is one)."""
    arr = np.ascontiguousarray(arr)
    h = hasher()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    flat = arr.reshape(-1).view(np.uint8)
    for start in range(0, flat.size, CHUNK):
        h.update(flat[start : start + CHUNK].data)
    return f"{ALGORITHM}:{h.hexdigest()}"
