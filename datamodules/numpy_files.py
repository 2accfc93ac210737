"""Reading ``.npy`` and ``.npz`` files safely: never unpickling, and every failure (empty,
truncated or CRC-damaged file, the wrong container, object or non-numeric arrays) raised
as a ``DataFormatError`` naming the file, the key and what was expected. Big-endian
arrays are converted to native byte order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.checks import DataFormatError, require_key

NPZ_MAGIC = b"PK"
NPY_MAGIC = b"\x93NUMPY"


def _head(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise DataFormatError(f"{path}: the file is empty (0 bytes)")
    return head


def numeric(arr: np.ndarray, path: Path | str, key: str) -> np.ndarray:
    """``arr`` in native byte order, refusing anything that is not a plain numeric array."""
    if arr.dtype.kind not in "biuf":
        raise DataFormatError(f"{path}: key {key!r} has dtype {arr.dtype}, expected a numeric (int or float) array")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def load_npy(path: str | Path, key: str, mmap: bool = True) -> np.ndarray:
    """One ``.npy`` array (memory-mapped if ``mmap`` and native-endian), checked numeric."""
    path = Path(path)
    head = _head(path)
    if head.startswith(NPZ_MAGIC):
        raise DataFormatError(f"{path}: is an .npz archive (zip); expected a single .npy array for {key!r}")
    if not head.startswith(NPY_MAGIC):
        raise DataFormatError(f"{path}: not a readable .npy array for {key!r} (bad magic bytes {head[:6]!r})")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy raises ValueError, EOFError, OSError, ... for damaged files
        raise DataFormatError(f"{path}: not a readable .npy array for {key!r}: truncated or damaged ({err})") from err
    return numeric(arr, path, key)


def open_npz(path: str | Path) -> np.lib.npyio.NpzFile:
    """An ``.npz`` archive opened without unpickling (members are read lazily, by key)."""
    path = Path(path)
    head = _head(path)
    if head.startswith(NPY_MAGIC):
        raise DataFormatError(f"{path}: holds a single array (.npy), expected an .npz archive of named arrays")
    try:
        npz = np.load(path, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile.BadZipFile, EOFError, ... for damaged files
        raise DataFormatError(f"{path}: not a readable .npz archive: truncated or damaged ({err})") from err
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataFormatError(f"{path}: holds a single array, expected an .npz archive of named arrays")
    return npz


def npz_array(npz: np.lib.npyio.NpzFile, key: str, path: str | Path) -> np.ndarray:
    """Member ``key`` of an open archive, read without unpickling and checked numeric."""
    if key not in npz.files:
        require_key(npz, key, path)  # raises, listing the keys the archive has
    try:
        arr = npz[key]
    except MemoryError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataFormatError(
                f"{path}: key {key!r} is an object (pickled) array, which is never unpickled; expected numbers"
            ) from err
        raise DataFormatError(f"{path}: key {key!r} is not a readable array ({err})") from err
    except Exception as err:  # noqa: BLE001 - zipfile.BadZipFile (bad CRC), zlib errors, truncation
        raise DataFormatError(f"{path}: key {key!r} is damaged (bad CRC or truncated: {err})") from err
    return numeric(np.asarray(arr), path, key)
