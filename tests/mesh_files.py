"""Tiny mesh files for prediction tests: closed boxes as VTK surfaces, tetra-free volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BOX_FACES = [[0, 3, 2, 1], [4, 5, 6, 7], [0, 1, 5, 4], [2, 3, 7, 6], [1, 2, 6, 5], [0, 4, 7, 3]]  # outward


def box_points(lo, hi) -> np.ndarray:
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    return np.array(
        [[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0], [x0, y0, z1], [x1, y0, z1], [x1, y1, z1], [x0, y1, z1]],
        dtype=np.float64,
    )


def subdivided_box(lo=(0.0, 0.0, 0.0), hi=(1.0, 2.0, 3.0), n: int = 3) -> tuple[np.ndarray, list[list[int]]]:
    """A closed box surface of 6 n² quads (outward winding), as points and polygons."""
    points, polys = [], []
    for face in BOX_FACES:
        corners = box_points(lo, hi)[face]
        base = len(points)
        for i in range(n + 1):
            for j in range(n + 1):
                u, v = i / n, j / n
                points.append((1 - u) * (1 - v) * corners[0] + u * (1 - v) * corners[1] + u * v * corners[2] + (1 - u) * v * corners[3])
        for i in range(n):
            for j in range(n):
                a = base + i * (n + 1) + j
                polys.append([a, a + n + 1, a + n + 2, a + 1])
    return np.array(points), polys


def write_vtp(path: Path, points: np.ndarray, polys: list[list[int]], cell_arrays: dict[str, np.ndarray] | None = None) -> Path:
    import vtk
    from vtkmodules.util.numpy_support import numpy_to_vtk

    poly = vtk.vtkPolyData()
    pts = vtk.vtkPoints()
    pts.SetData(numpy_to_vtk(np.asarray(points, dtype=np.float64), deep=True))
    poly.SetPoints(pts)
    cells = vtk.vtkCellArray()
    for c in polys:
        cells.InsertNextCell(len(c), c)
    poly.SetPolys(cells)
    for name, values in (cell_arrays or {}).items():
        arr = numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float32), deep=True)
        arr.SetName(name)
        poly.GetCellData().AddArray(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = vtk.vtkXMLPolyDataWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(poly)
    assert writer.Write() == 1
    return path


def read_arrays(path: Path, association: str = "points") -> tuple[object, dict[str, np.ndarray]]:
    """A written VTK file read back with plain vtk: the dataset and its arrays."""
    import vtk
    from vtkmodules.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkXMLPolyDataReader() if path.suffix == ".vtp" else vtk.vtkXMLUnstructuredGridReader()
    reader.SetFileName(str(path))
    reader.Update()
    data = reader.GetOutput()
    attrs = data.GetCellData() if association == "cells" else data.GetPointData()
    arrays = {attrs.GetArrayName(i): vtk_to_numpy(attrs.GetArray(i)) for i in range(attrs.GetNumberOfArrays())}
    field = data.GetFieldData()
    for i in range(field.GetNumberOfArrays()):
        arrays["field:" + field.GetArrayName(i)] = vtk_to_numpy(field.GetArray(i))
    return data, arrays
