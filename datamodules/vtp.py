"""Cell centres and cell arrays of VTK XML PolyData (``.vtp``) surfaces; needs ``vtk``
(``pip install 'flare-lightning[vtk]'``), imported only when a file is read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datamodules.checks import DataFormatError, finite_float32
from datamodules.surface_geometry import vtp_normals_and_areas


def _vtk():
    try:
        from vtkmodules.util.numpy_support import vtk_to_numpy
        from vtkmodules.vtkFiltersCore import vtkCellCenters
        from vtkmodules.vtkIOXML import vtkXMLPolyDataReader
    except ImportError as err:
        raise ImportError(
            "reading .vtp surfaces needs the optional dependency vtk: pip install 'flare-lightning[vtk]' "
            "(or pip install vtk)"
        ) from err
    return vtk_to_numpy, vtkCellCenters, vtkXMLPolyDataReader


def read_vtp_cells(
    path: str | Path, arrays: Sequence[str], optional: bool = False, geometry: bool = False
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cell centres float32 [N, 3] and the named cell-data arrays ([N] or [N, k]) of a
    ``.vtp`` file; errors name the file and the missing array, listing those present.
    ``optional`` leaves absent arrays out instead; ``geometry`` adds ``normals`` [N, 3] and
    ``areas`` [N, 1] of the cells (``surface_geometry``: oriented into the body)."""
    vtk_to_numpy, vtkCellCenters, vtkXMLPolyDataReader = _vtk()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f".vtp file not found: {path}")
    reader = vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    if poly is None or poly.GetNumberOfCells() == 0:
        raise DataFormatError(f"{path}: no cells could be read (expected a VTK XML PolyData surface)")
    cell_data = poly.GetCellData()
    present = [cell_data.GetArrayName(i) for i in range(cell_data.GetNumberOfArrays())]
    out = {}
    for name in arrays:
        arr = cell_data.GetArray(name)
        if arr is None and optional:
            continue
        if arr is None:
            raise DataFormatError(f"{path}: missing cell array {name!r} (cell arrays present: {present})")
        out[name] = finite_float32(vtk_to_numpy(arr), path, name)
    centres = vtkCellCenters()
    centres.SetInputData(poly)
    centres.VertexCellsOff()
    centres.Update()
    pos = finite_float32(vtk_to_numpy(centres.GetOutput().GetPoints().GetData()), path, "cell centres")
    if geometry:
        out["normals"], out["areas"] = vtp_normals_and_areas(poly, pos, path)
    return pos, out
