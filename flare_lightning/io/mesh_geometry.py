"""Where a predicted sample lives: its name and the mesh its values belong on."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

Association = Literal["points", "cells"]
VTK_VERTEX, VTK_HEXAHEDRON = 1, 12


def check_output_name(name: str, source: object = None) -> str:
    """``name`` if it can name an output file inside its folder: one path component, not
    hidden (temporary files start with a dot), else a ``ValueError`` naming the source."""
    bad = not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0")
    if bad:
        raise ValueError(
            f"{source if source is not None else 'a predicted sample'}: its output name {name!r} is not a plain file "
            "name (non-empty, no '/', not starting with '.'); rename the input"
        )
    return name


class MeshGeometry:
    """The geometry a prediction is written onto (a plain object: it travels through data
    loaders and Lightning's device transfer untouched).

    Args:
        name: output file name without its suffix, named by the source (``run_17``,
            ``case_0042``); a plain file name (``check_output_name``).
        association: whether the values sit on the mesh ``points`` or its ``cells``.
        source: a ``.vtp``/``.vtu`` file whose points and cells are copied as they are.
        points: [P, 2 or 3] coordinates, for sources that are not VTK files.
        cells: [E, k] point indices of cells of one VTK type ``cell_type`` (None: a point
            cloud, written with one vertex cell per point so ParaView shows it).
        cell_type: VTK cell type of ``cells`` (12 = hexahedron).
    """

    def __init__(
        self,
        name: str,
        association: Association = "points",
        source: str | Path | None = None,
        points: np.ndarray | None = None,
        cells: np.ndarray | None = None,
        cell_type: int = VTK_HEXAHEDRON,
    ) -> None:
        if source is None and points is None:
            raise ValueError(f"MeshGeometry {name!r}: give a VTK source file or the points")
        self.association = association
        self.source = None if source is None else Path(source)
        self.points, self.cells, self.cell_type = points, cells, cell_type
        self.name = name

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        self._name = check_output_name(name, self.source)

    def __repr__(self) -> str:
        where = self.source if self.source is not None else f"{len(self.points)} points"
        return f"MeshGeometry({self.name!r}, {self.association}, {where})"
