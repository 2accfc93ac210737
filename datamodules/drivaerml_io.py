"""DrivAerML files: the presampled ``run_<i>.npz`` layout, run ids and split files.

An archive holds ``surface_mesh_centers`` float32 (N, 3) [m] (surface cell centres) and
``surface_fields`` float32 (N, 4) = [p, τx, τy, τz], time-averaged kinematic pressure
and wall shear stress [m²/s²] (divided by the density). Files made by the DrivAerML
proxy generator also hold a ``proxy`` string, so proxy data is never taken for DrivAerML.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from datamodules.checks import DataFormatError, check_shape, finite_float32, require_key
from datamodules.numpy_files import npz_array, open_npz
from flare_lightning.atomic import atomic_write

U_INF = 38.889  # free-stream speed of the DrivAerML runs [m/s]
Q_INF = 756.18  # dynamic pressure 0.5 U∞² [m²/s²]: Cp = p / Q_INF
CENTERS_KEY = "surface_mesh_centers"
FIELDS_KEY = "surface_fields"
PROXY_KEY = "proxy"
PROXY_LABEL = "DrivAerML proxy (potential flow)"
_RUN_NAME = re.compile(r"run_(\d+)\.npz")


def read_run_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(centres float32 [N, 3], fields float32 [N, 4]) of one archive, checked for keys,
    shapes and finiteness; errors name the file and the key."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DrivAerML run file not found: {path}")
    try:
        arrays = open_npz(path)
    except DataFormatError as err:
        raise DataFormatError(f"{err} (expected keys {CENTERS_KEY!r}, {FIELDS_KEY!r})") from err
    with arrays:
        centres = npz_array(arrays, CENTERS_KEY, path)
        fields = npz_array(arrays, FIELDS_KEY, path)
    check_shape(centres, (None, 3), path, CENTERS_KEY)
    check_shape(fields, (centres.shape[0], 4), path, FIELDS_KEY)
    if centres.shape[0] == 0:
        raise DataFormatError(f"{path}: key {CENTERS_KEY!r} holds no points, expected (N, 3) with N > 0")
    return finite_float32(centres, path, CENTERS_KEY), finite_float32(fields, path, FIELDS_KEY)


def is_proxy_file(path: str | Path) -> bool:
    """True if the archive was written by the DrivAerML proxy generator (False if unreadable:
    ``read_run_npz`` then reports it)."""
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception:  # noqa: BLE001 - any damage: read_run_npz names it
        return False
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        return False
    with arrays:
        return PROXY_KEY in arrays.files


def write_run_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file in the same folder, then rename: never half-written."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def list_runs(folder: Path) -> list[int]:
    """Sorted run ids of the ``run_<i>.npz`` files in ``folder``."""
    ids = [int(m.group(1)) for p in folder.glob("run_*.npz") if (m := _RUN_NAME.fullmatch(p.name))]
    return sorted(ids)


def _run_id(value: object, path: Path, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataFormatError(f"{path}: key {key!r} holds {value!r}, expected run ids (integers such as 17)")
    text = str(value)
    match = re.fullmatch(r"(?:run_)?(\d+)", text)
    if match is None:
        raise DataFormatError(f"{path}: key {key!r} holds {value!r}, expected run ids (17 or 'run_17')")
    return int(match.group(1))


def read_split_file(path: str | Path) -> dict[str, list[int]]:
    """``{"train": [...], "test": [...]}`` run ids from a JSON file; both lists non-empty
    and disjoint (ids may be written 17 or "run_17")."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DrivAerML split file not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise DataFormatError(f'{path}: expected a JSON object {{"train": [...], "test": [...]}}')
    split = {}
    for key in ("train", "test"):
        ids = require_key(raw, key, path)
        if not isinstance(ids, list) or not ids:
            raise DataFormatError(f"{path}: key {key!r} must be a non-empty list of run ids, got {ids!r}")
        split[key] = [_run_id(v, path, key) for v in ids]
    shared = sorted(set(split["train"]) & set(split["test"]))
    if shared:
        raise DataFormatError(f"{path}: runs {shared} are in both 'train' and 'test'")
    return split
