"""Early, specific errors for bad data files: each names the file, the key and what was expected."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class DataFormatError(ValueError):
    """A data file is missing, incomplete or malformed."""


def require_files(paths: Sequence[Path], hint: str = "") -> None:
    """Raise ``FileNotFoundError`` listing every missing path."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        extra = f" {hint}" if hint else ""
        raise FileNotFoundError(f"missing data file(s): {', '.join(missing)}.{extra}")


def require_key(arrays: Mapping[str, Any], key: str, file: Path | str) -> Any:
    """``arrays[key]``, or a ``DataFormatError`` naming the file and the keys it has."""
    if key not in arrays:
        have = sorted(k for k in arrays.keys() if not str(k).startswith("__"))
        raise DataFormatError(f"{file}: missing key {key!r} (found keys: {have})")
    return arrays[key]


def check_shape(arr: np.ndarray, expected: Sequence[int | None], file: Path | str, key: str) -> np.ndarray:
    """Check ``arr.shape`` against ``expected`` (None matches any size)."""
    ok = arr.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, arr.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise DataFormatError(f"{file}: key {key!r} has shape {tuple(arr.shape)}, expected {want}")
    return arr


def check_finite(arr: np.ndarray, file: Path | str, key: str) -> np.ndarray:
    """Reject NaN or Inf values, saying how many and where the first one is."""
    arr = np.asarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataFormatError(
                f"{file}: key {key!r} has {int(bad.sum())} NaN/Inf value(s), first at index {first}"
            )
    return arr


def finite_float32(arr: np.ndarray, file: Path | str, key: str) -> np.ndarray:
    """``arr`` cast to float32 (the cached dtype), then checked finite: values finite in
    float64 but beyond float32's range (|x| > 3.4e38) are caught, not cached as Inf."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DataFormatError(f"{file}: key {key!r} has dtype {arr.dtype}, expected a numeric array")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        nonfinite = ~np.isfinite(arr) if arr.dtype.kind == "f" else np.zeros(arr.shape, dtype=bool)
        if nonfinite.any():
            check_finite(arr, file, key)
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataFormatError(
            f"{file}: key {key!r} has {int(bad.sum())} value(s) beyond the float32 range (|x| > 3.4e38), "
            f"first at index {first}: they would become Inf in the float32 cache"
        )
    return out
