"""Write per-point or per-cell fields onto a mesh as VTK XML (``.vtp`` surfaces, ``.vtu``
volumes and point clouds) that ParaView opens as they are; needs ``vtk``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from flare_lightning.atomic import atomic_path
from flare_lightning.io.mesh_geometry import VTK_VERTEX, MeshGeometry


def _vtk():
    try:
        import vtkmodules.vtkCommonCore as core
        import vtkmodules.vtkCommonDataModel as model
        import vtkmodules.vtkIOXML as xml
        from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
    except ImportError as err:
        raise ImportError(
            "writing VTK files needs the optional dependency vtk: pip install 'flare-lightning[vtk]'"
        ) from err
    return core, model, xml, numpy_to_vtk, numpy_to_vtkIdTypeArray


def read_vtk_dataset(path: str | Path):
    """The ``vtkPolyData`` of a ``.vtp`` or the ``vtkUnstructuredGrid`` of a ``.vtu`` file."""
    _, _, xml, _, _ = _vtk()
    path = Path(path)
    readers = {".vtp": xml.vtkXMLPolyDataReader, ".vtu": xml.vtkXMLUnstructuredGridReader}
    if path.suffix not in readers:
        raise ValueError(f"{path}: expected a .vtp or .vtu file")
    if not path.is_file():
        raise FileNotFoundError(f"VTK file not found: {path}")
    reader = readers[path.suffix]()
    reader.SetFileName(str(path))
    reader.Update()
    data = reader.GetOutput()
    if data is None or data.GetNumberOfPoints() == 0:
        raise ValueError(f"{path}: no points could be read (expected VTK XML {path.suffix[1:].upper()} data)")
    return data


def _point_cloud_or_volume(geometry: MeshGeometry):
    core, model, _, numpy_to_vtk, numpy_to_vtkIdTypeArray = _vtk()
    pts = np.asarray(geometry.points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (1, 2, 3):
        raise ValueError(f"{geometry.name}: points have shape {pts.shape}, expected [P, 1-3]")
    pts = np.pad(pts, ((0, 0), (0, 3 - pts.shape[1])))
    grid = model.vtkUnstructuredGrid()
    points = core.vtkPoints()
    points.SetData(numpy_to_vtk(pts, deep=True))
    grid.SetPoints(points)
    if geometry.cells is None:
        conn, width, kind = np.arange(len(pts)), 1, VTK_VERTEX
    else:
        cells = np.asarray(geometry.cells, dtype=np.int64)
        if cells.ndim != 2 or (cells.size and (cells.min() < 0 or cells.max() >= len(pts))):
            raise ValueError(f"{geometry.name}: cells must be [E, k] indices into its {len(pts)} points")
        conn, width, kind = cells.reshape(-1), cells.shape[1], geometry.cell_type
    n_cells = len(conn) // width
    offsets = np.arange(0, n_cells * width + 1, width, dtype=np.int64)
    cell_array = model.vtkCellArray()
    cell_array.SetData(
        numpy_to_vtkIdTypeArray(offsets, deep=True), numpy_to_vtkIdTypeArray(conn.astype(np.int64), deep=True)
    )
    grid.SetCells(kind, cell_array)  # one cell type for all cells
    return grid


def build_dataset(geometry: MeshGeometry):
    """A VTK dataset holding the geometry's points and cells and no arrays."""
    if geometry.source is None:
        return _point_cloud_or_volume(geometry)
    data = read_vtk_dataset(geometry.source)
    for attributes in (data.GetPointData(), data.GetCellData(), data.GetFieldData()):
        for i in reversed(range(attributes.GetNumberOfArrays())):
            attributes.RemoveArray(i)
    return data


def output_file(path: str | Path, poly: bool) -> Path:
    """``path`` with the suffix the data asks for appended (``.vtp`` for PolyData, ``.vtu``
    otherwise): ``mesh.v1`` -> ``mesh.v1.vtu``, never ``mesh.vtu``, so distinct names give
    distinct files."""
    path = Path(path)
    return path.with_name(path.name + (".vtp" if poly else ".vtu"))


def write_fields(
    path: str | Path,
    geometry: MeshGeometry,
    arrays: Mapping[str, np.ndarray],
    components: Sequence[str] | None = None,
    field_data: Mapping[str, float] | None = None,
) -> Path:
    """Write ``arrays`` ([n, C] each, n = points or cells of the mesh as ``geometry.association``
    says) onto the geometry, at ``output_file(path, ...)``; written to a temporary file, then
    renamed.

    Args:
        path: output file, without its suffix (``.vtp``/``.vtu`` is added, see ``output_file``).
        geometry: the mesh.
        arrays: name -> values [n] or [n, C].
        components: names of the C components (ParaView shows them), when C > 1.
        field_data: scalars stored once per file (e.g. the sample's relative L2 error).
    """
    _, _, xml, numpy_to_vtk, _ = _vtk()
    data = build_dataset(geometry)
    attributes = data.GetCellData() if geometry.association == "cells" else data.GetPointData()
    expected = data.GetNumberOfCells() if geometry.association == "cells" else data.GetNumberOfPoints()
    for name, values in arrays.items():
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.shape[0] != expected:
            raise ValueError(
                f"{geometry.name}: array {name!r} has {values.shape[0]} values, the mesh has {expected} "
                f"{geometry.association}"
            )
        arr = numpy_to_vtk(values.reshape(expected, -1) if values.ndim > 1 else values, deep=True)
        arr.SetName(name)
        if components is not None and values.ndim > 1 and values.shape[1] == len(components) > 1:
            for i, comp in enumerate(components):
                arr.SetComponentName(i, comp)
        attributes.AddArray(arr)
    for name, value in (field_data or {}).items():
        arr = numpy_to_vtk(np.asarray([value], dtype=np.float64), deep=True)
        arr.SetName(name)
        data.GetFieldData().AddArray(arr)
    poly = data.IsA("vtkPolyData")
    path = output_file(path, poly)
    writer = xml.vtkXMLPolyDataWriter() if poly else xml.vtkXMLUnstructuredGridWriter()
    with atomic_path(path, suffix=path.suffix) as tmp:
        writer.SetFileName(tmp)
        writer.SetInputData(data)
        writer.SetDataModeToAppended()
        writer.SetCompressorTypeToZLib()
        if writer.Write() != 1:
            raise OSError(f"VTK could not write {path}")
    return path
