"""Read new DrivAerML-style surfaces for ``flare predict``: raw ``boundary_<i>.vtp`` (cell
centres, cell normals and areas from the mesh) or presampled ``run_<i>.npz`` archives."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.checks import check_finite, check_shape
from datamodules.drivaerml_io import CENTERS_KEY, FIELDS_KEY, Q_INF, read_run_npz
from datamodules.point_sets import PointSetReader, as_columns
from datamodules.vtp import read_vtp_cells
from flare_lightning.io.mesh_geometry import MeshGeometry

VTP_PRESSURE, VTP_WSS = "pMeanTrim", "wallShearStressMeanTrim"
NORMALS_KEY, AREAS_KEY = "surface_normals", "surface_areas"  # optional in presampled archives
_RUN = re.compile(r"(?:boundary|run)_(\d+)")


class DrivAerMLReader:
    """One surface as a sample: ``pos`` [N, 3] cell centres [m], ``y`` [N, 1 or 4] when the
    file has the fields (p, τ in m²/s², or divided by q∞ with ``pressure_as_cp``), and
    ``normals`` [N, 3] / ``areas`` [N, 1] (into the body) from a ``.vtp`` mesh or from the
    archive keys ``surface_normals`` / ``surface_areas`` when present.

    Args:
        out_dim: 1 (pressure) or 4 (pressure and wall shear stress).
        pressure_as_cp: divide targets by q∞ = 756.18 m²/s².
        strict: training data: ``.npz`` files must be archives with fields, ``.vtp`` files
            must have the target arrays (errors name the missing key).
    """

    def __init__(self, out_dim: int, pressure_as_cp: bool, strict: bool = False) -> None:
        self.out_dim, self.pressure_as_cp, self.strict = out_dim, pressure_as_cp, strict

    def output_name(self, path: Path) -> str:
        """``run_<i>`` for ``boundary_<i>.vtp`` and ``run_<i>.npz``, else the file stem."""
        match = _RUN.fullmatch(path.stem)
        return f"run_{match.group(1)}" if match else path.stem

    def __call__(self, path: Path) -> dict[str, Any]:
        name = self.output_name(path)
        if path.suffix == ".vtp":
            names = (VTP_PRESSURE, VTP_WSS)[: 1 if self.out_dim == 1 else 2]
            pos, cells = read_vtp_cells(path, names, optional=not self.strict, geometry=True)
            sample = {"pos": pos, "normals": cells["normals"], "areas": cells["areas"]}
            if all(k in cells for k in names):
                n = len(pos)
                parts = [check_shape(cells[VTP_PRESSURE].reshape(n, -1), (n, 1), path, VTP_PRESSURE)]
                if self.out_dim == 4:
                    parts.append(check_shape(cells[VTP_WSS].reshape(n, -1), (n, 3), path, VTP_WSS))
                sample["y"] = np.concatenate(parts, axis=1)
            sample["geometry"] = MeshGeometry(name, "cells", source=path)
        elif path.suffix == ".npz" and (self.strict or _has_key(path, CENTERS_KEY)):
            sample = self._archive(path, name)
        else:  # plain point sets: pos and optional y
            sample = PointSetReader(3, self.out_dim, pos_dim=3)(path)
            sample["geometry"].name = name
        if "y" in sample and self.pressure_as_cp:
            sample["y"] = sample["y"] / Q_INF
        return sample

    def _archive(self, path: Path, name: str) -> dict[str, Any]:
        checked = read_run_npz(path) if self.strict else None  # names unreadable files and missing keys
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            extra = {k: npz[k] for k in (NORMALS_KEY, AREAS_KEY) if k in keys}
            centres = None if FIELDS_KEY in keys or self.strict else np.asarray(npz[CENTERS_KEY])
        if centres is None:
            pos, fields = checked or read_run_npz(path)
            sample = {"pos": pos, "y": fields[:, : self.out_dim]}
        else:
            pos = check_finite(check_shape(centres, (None, 3), path, CENTERS_KEY), path, CENTERS_KEY)
            sample = {"pos": pos.astype(np.float32)}
        n = len(sample["pos"])
        if NORMALS_KEY in extra and AREAS_KEY in extra:
            for key, name, width in ((NORMALS_KEY, "normals", 3), (AREAS_KEY, "areas", 1)):
                sample[name] = check_shape(as_columns(extra[key], n, path, key), (n, width), path, key)
        sample["geometry"] = MeshGeometry(name, "points", points=sample["pos"])
        return sample


def _has_key(path: Path, key: str) -> bool:
    with np.load(path, allow_pickle=False) as npz:
        return key in npz.files
