"""Cell normals and areas of polygon surfaces, for integrating forces: exact vector areas
of each polygon (fan triangulation), oriented into the body."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.checks import DataFormatError


def polygon_vector_areas(points: np.ndarray, offsets: np.ndarray, connectivity: np.ndarray) -> np.ndarray:
    """Vector area ``0.5 Σ (p_k - p_0) x (p_k+1 - p_0)`` of each polygon, float64 [E, 3]: its
    norm is the area (exact for planar polygons), its direction the winding's normal."""
    points = np.asarray(points, dtype=np.float64)
    sizes = np.diff(offsets)
    if (sizes < 3).any():
        raise DataFormatError(f"surface has {(sizes < 3).sum()} cell(s) with fewer than 3 points")
    tris = sizes - 2
    cell = np.repeat(np.arange(len(sizes)), tris)
    k = np.arange(tris.sum()) - np.repeat(np.cumsum(tris) - tris, tris) + 1  # 1 .. size-2 in each cell
    first = offsets[:-1][cell]
    p0 = points[connectivity[first]]
    p1 = points[connectivity[first + k]]
    p2 = points[connectivity[first + k + 1]]
    out = np.zeros((len(sizes), 3))
    np.add.at(out, cell, 0.5 * np.cross(p1 - p0, p2 - p0))
    return out


def normals_and_areas(
    vector_areas: np.ndarray, centres: np.ndarray, path: str | Path = "surface"
) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals [E, 3] and areas [E, 1] (float32) from vector areas, turned as a whole
    to point into the enclosed body (out of the fluid, as OpenFOAM's boundary faces and
    DrivAerML's surfaces): the body's signed volume ``Σ c·a / 3`` must come out negative."""
    areas = np.linalg.norm(vector_areas, axis=1)
    if (areas <= 0).any():
        raise DataFormatError(f"{path}: {(areas <= 0).sum()} cell(s) of zero area, normals undefined")
    normals = vector_areas / areas[:, None]
    if np.sum(np.einsum("ij,ij->i", centres.astype(np.float64), vector_areas)) > 0:
        normals = -normals
    return normals.astype(np.float32), areas[:, None].astype(np.float32)


def vtp_normals_and_areas(poly, centres: np.ndarray, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Normals and areas of the polygons of a ``vtkPolyData`` whose cells are all polygons
    (in cell order, matching its cell centres)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    others = poly.GetNumberOfVerts() + poly.GetNumberOfLines() + poly.GetNumberOfStrips()
    if others:
        raise DataFormatError(f"{path}: {others} vertex/line/strip cells; forces need a surface of polygons only")
    polys = poly.GetPolys()
    offsets = vtk_to_numpy(polys.GetOffsetsArray()).astype(np.int64)
    connectivity = vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64)
    points = vtk_to_numpy(poly.GetPoints().GetData())
    return normals_and_areas(polygon_vector_areas(points, offsets, connectivity), centres, path)
