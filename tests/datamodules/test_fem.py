"""Finite-element helpers of the generators: nodal gradient recovery and von Mises."""

from __future__ import annotations

import numpy as np
import pytest
from skfem import Basis, ElementHex1, ElementQuad2, ElementVector, MeshHex, MeshQuad

from datamodules.fem import nodal_gradient, von_mises


@pytest.mark.parametrize(
    "mesh, element, field, gradient",
    [
        (  # u = (x², xy) lies in Q2: its gradient is exact at every vertex
            MeshQuad.init_tensor(np.array([0, 0.3, 1.0]), np.array([0, 0.6, 0.8, 1.0])),
            ElementVector(ElementQuad2()),
            lambda x: np.stack([x[0] ** 2, x[0] * x[1]]),
            lambda x: np.array([[2 * x[0], 0 * x[0]], [x[1], x[0]]]),
        ),
        (  # u = (xy, yz, zx) lies in Q1 (trilinear)
            MeshHex.init_tensor(np.array([0, 0.4, 1.0]), np.array([0, 1.0, 2.0]), np.array([0, 0.5, 0.7])),
            ElementVector(ElementHex1()),
            lambda x: np.stack([x[0] * x[1], x[1] * x[2], x[2] * x[0]]),
            lambda x: np.array(
                [[x[1], x[0], 0 * x[0]], [0 * x[0], x[2], x[1]], [x[2], 0 * x[0], x[0]]]
            ),
        ),
    ],
)
def test_nodal_gradient_is_exact_for_fields_in_the_element_space(mesh, element, field, gradient):
    basis = Basis(mesh, element)
    u = basis.project(field)
    np.testing.assert_allclose(nodal_gradient(mesh, element, u), gradient(mesh.p), atol=1e-10)


def test_von_mises_of_simple_states():
    tension = np.diag([0.0, 100.0, 0.0])
    shear = np.array([[0.0, 10.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    hydrostatic = np.eye(3) * -50.0
    stack = np.stack([tension, shear, hydrostatic, tension + hydrostatic], axis=-1)  # [3, 3, 4]
    np.testing.assert_allclose(von_mises(stack), [100.0, np.sqrt(3) * 10.0, 0.0, 100.0], atol=1e-12)
