"""Plain point sets for ``flare predict``: ``.npz`` (``pos``, ``x``, ``y``) and VTK
``.vtp``/``.vtu`` files (point coordinates, point arrays ``x``, ``y``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamodules.checks import DataFormatError, check_shape, finite_float32, require_key
from datamodules.numpy_files import npz_array, open_npz
from flare_lightning.io.mesh_geometry import MeshGeometry

POS_KEY, INPUT_KEY, TARGET_KEY = "pos", "x", "y"
VTK_SUFFIXES = (".vtp", ".vtu")


def as_columns(arr: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    """``arr`` as float32 [n, C] (a 1-D array of length n becomes [n, 1]), with the checks of
    training data: real numbers (not complex, strings or objects), finite in float32."""
    arr = np.asarray(arr)
    if arr.ndim == 1:
        arr = arr[:, None]
    check_shape(arr, (n, None), path, key)
    return finite_float32(arr, path, key)


def vtk_arrays(data, association: str) -> dict[str, np.ndarray]:
    """Named arrays of a VTK dataset's point or cell data, as numpy."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    attributes = data.GetCellData() if association == "cells" else data.GetPointData()
    out = {}
    for i in range(attributes.GetNumberOfArrays()):
        arr = attributes.GetArray(i)
        if arr is not None and arr.GetName():
            out[arr.GetName()] = vtk_to_numpy(arr)
    return out


class PointSetReader:
    """Reads one point set as a sample for a model with ``in_dim`` inputs (coordinates,
    then the input fields ``x``) and ``out_dim`` outputs (optional targets ``y``).

    The coordinates take ``pos_dim`` columns and ``x`` the other ``in_dim - pos_dim``, as in
    the training data (a file without the input fields the model takes is refused, never
    read with a coordinate in their place); 2-D datasets read the x, y of VTK points, whose
    z must then be constant. Without ``pos_dim`` the coordinates take ``in_dim - width(x)``.
    Only the keys ``pos``, ``x`` and ``y`` of an ``.npz`` are read. Values sit on the
    points; the output keeps the VTK file's cells, or is a point cloud for ``.npz``.

    Args:
        in_dim: model input channels.
        out_dim: model output channels (width of ``y`` when present).
        pos_dim: coordinates per point in the training data (None: unknown).
    """

    def __init__(self, in_dim: int, out_dim: int, pos_dim: int | None = None) -> None:
        self.in_dim, self.out_dim, self.pos_dim = in_dim, out_dim, pos_dim

    def output_name(self, path: Path) -> str:
        """Name of the output written for ``path``: its stem."""
        return path.stem

    def __call__(self, path: Path) -> dict[str, Any]:
        if path.suffix in VTK_SUFFIXES:
            from flare_lightning.io.vtk_writer import read_vtk_dataset
            from vtkmodules.util.numpy_support import vtk_to_numpy

            data = read_vtk_dataset(path)
            arrays = vtk_arrays(data, "points")
            coords = vtk_to_numpy(data.GetPoints().GetData()).astype(np.float64)
            geometry = MeshGeometry(self.output_name(path), "points", source=path)
        elif path.suffix == ".npz":
            with open_npz(path) as npz:
                require_key(npz, POS_KEY, path)
                arrays = {k: npz_array(npz, k, path) for k in (POS_KEY, INPUT_KEY, TARGET_KEY) if k in npz.files}
            coords = arrays[POS_KEY]
            geometry = None
        else:
            raise DataFormatError(f"{path}: unsupported file type, expected .npz, .vtp or .vtu")
        n = len(coords)
        if n == 0:
            raise DataFormatError(f"{path}: no points")
        x = as_columns(arrays[INPUT_KEY], n, path, INPUT_KEY) if INPUT_KEY in arrays else None
        fields = 0 if x is None else x.shape[1]
        if self.pos_dim is not None and fields != self.in_dim - self.pos_dim:
            raise DataFormatError(
                f"{path}: the model takes {self.pos_dim} coordinates and {self.in_dim - self.pos_dim} input field(s) "
                f"per point (key {INPUT_KEY!r}), as in its training data; the file has {fields}"
            )
        dim = self.in_dim - fields
        coords = as_columns(coords, n, path, POS_KEY if geometry is None else "points")
        if dim < 1 or dim > coords.shape[1]:
            raise DataFormatError(
                f"{path}: the model takes {self.in_dim} inputs; with {0 if x is None else x.shape[1]} input "
                f"field(s) in {INPUT_KEY!r} that leaves {dim} coordinates, but the points have {coords.shape[1]}"
            )
        extra = coords[:, dim:]
        if extra.size and np.ptp(extra, axis=0).max() > 0:
            raise DataFormatError(f"{path}: the model takes {dim}-D coordinates, but the points vary in the others")
        if geometry is None:
            geometry = MeshGeometry(self.output_name(path), "points", points=coords)
        sample = {"pos": coords[:, :dim], "geometry": geometry}
        if x is not None:
            sample["x"] = x
        if TARGET_KEY in arrays:
            y = as_columns(arrays[TARGET_KEY], n, path, TARGET_KEY)
            sample["y"] = check_shape(y, (n, self.out_dim), path, TARGET_KEY)
        return sample
