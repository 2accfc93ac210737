"""Small scikit-fem helpers shared by the elasticity and LPBF-proxy generators."""

from __future__ import annotations

import numpy as np
from skfem import Basis, ElementVector, Mesh


def nodal_gradient(mesh: Mesh, element: ElementVector, u: np.ndarray) -> np.ndarray:
    """Gradient of a vector field at the mesh vertices: [d, d, n_vertices].

    ``u`` holds the degrees of freedom of ``element`` on ``mesh``. The gradient is
    evaluated at each element's corners and averaged over the elements sharing a
    vertex (the usual nodal averaging of finite-element post-processing);
    ``grad[i, j]`` is ``∂u_i / ∂x_j``.
    """
    corners = mesh.elem().doflocs.T  # [d, corners], reference corner k <-> mesh.t[k]
    basis = Basis(mesh, element, quadrature=(corners, np.ones(corners.shape[1])))
    grad = basis.interpolate(u).grad  # [d, d, E, corners]
    d, n = mesh.p.shape
    nodes = mesh.t.T.ravel()  # [E * corners], same order as grad[i, j].ravel()
    count = np.bincount(nodes, minlength=n)
    out = np.empty((d, d, n))
    for i in range(d):
        for j in range(d):
            out[i, j] = np.bincount(nodes, weights=grad[i, j].ravel(), minlength=n) / count
    return out


def von_mises(stress: np.ndarray) -> np.ndarray:
    """Von Mises stress ``sqrt(3/2 s:s)`` of 3x3 stress tensors [3, 3, ...] (s: deviator)."""
    mean = np.trace(stress) / 3.0
    dev = stress - mean * np.eye(3).reshape(3, 3, *([1] * (stress.ndim - 2)))
    return np.sqrt(1.5 * np.einsum("ij...,ij...->...", dev, dev))
