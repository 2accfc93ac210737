"""Read new LPBF parts for ``flare predict``: ``case*.npz`` files (``pos`` in mm, optional
hexahedra ``elems`` and fields) or plain ``.vtu``/``.vtp``/``.npz`` point sets in mm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamodules.checks import DataFormatError, check_shape
from datamodules.numpy_files import npz_array, open_npz
from datamodules.point_sets import PointSetReader
from flare_lightning.io.mesh_geometry import VTK_HEXAHEDRON, MeshGeometry

ELEMS_KEY = "elems"


class LPBFReader:
    """One part as a sample: ``pos`` = node coordinates [mm] / ``scale``, ``y`` [N, T] when
    the file holds every target field, and its hexahedra (VTK node order) for the output.

    Args:
        targets: target names (``datamodules.lpbf.TARGETS``).
        scale: x, y, z divisors of the coordinates (the datamodule's ``build_volume``).
    """

    def __init__(self, targets: list[str], scale: tuple[float, float, float]) -> None:
        self.targets, self.scale = list(targets), np.asarray(scale, dtype=np.float32)

    def output_name(self, path: Path) -> str:
        return path.stem

    def __call__(self, path: Path) -> dict[str, Any]:
        from datamodules.lpbf import TARGETS, read_lpbf_case

        if path.suffix == ".npz" and not _is_point_set(path):
            with open_npz(path) as npz:
                fields = sorted({TARGETS[t][0] for t in self.targets})
                has_fields = all(f in npz.files for f in fields)
                elems = npz_array(npz, ELEMS_KEY, path) if ELEMS_KEY in npz.files else None
            case = read_lpbf_case(path, fields if has_fields else [])
            pos = case["pos"].astype(np.float32)
            cells = None if elems is None else check_cells(elems, len(pos), path)
            sample = {"pos": pos, "geometry": MeshGeometry(path.stem, "points", points=pos, cells=cells,
                                                           cell_type=VTK_HEXAHEDRON)}
            if has_fields:
                sample["y"] = np.stack([case[TARGETS[t][0]][:, TARGETS[t][1]] for t in self.targets], axis=-1)
        else:
            sample = PointSetReader(3, len(self.targets), pos_dim=3)(path)
        sample["pos"] = sample["pos"] / self.scale
        return sample


def check_cells(elems: np.ndarray, nodes: int, path: Path) -> np.ndarray:
    """Hexahedra [E, 8] as int64 indices into the ``nodes`` nodes: integers, never truncated floats."""
    check_shape(elems, (None, 8), path, ELEMS_KEY)
    if elems.dtype.kind not in "iu":
        raise DataFormatError(f"{path}: key {ELEMS_KEY!r} has dtype {elems.dtype}, expected integer node indices")
    if elems.size and (elems.min() < 0 or elems.max() >= nodes):
        raise DataFormatError(f"{path}: key {ELEMS_KEY!r} holds node indices outside [0, {nodes}) ({elems.min()}..{elems.max()})")
    return elems.astype(np.int64)


def _is_point_set(path: Path) -> bool:
    """A plain point set (``y`` key) rather than an LPBF case (``disp``, ``elems``...)."""
    with np.load(path, allow_pickle=False) as npz:
        return "y" in npz.files
