"""Elasticity cells made here: Geo-FNO layout, void geometry and finite-element physics."""

from __future__ import annotations

import numpy as np
import pytest
from skfem import MeshQuad

from datamodules.elasticity import ElasticityDataModule
from datamodules.elasticity_generate import (
    FILES,
    N_AROUND,
    SHEAR_MODULUS,
    TRACTION,
    generate_elasticity,
    solve_unit_cell,
    unit_cell_mesh,
    void_radius,
    write_elasticity,
)


@pytest.fixture(scope="session")
def generated() -> dict[str, np.ndarray]:
    return generate_elasticity(3, seed=0)


def test_layout_matches_geofno_files(generated, tmp_path):
    shapes = {"XY": (972, 2, 3), "sigma": (972, 3), "rr": (42, 3), "theta": (3, 10)}
    write_elasticity(tmp_path, generated)
    for key, shape in shapes.items():
        array = np.load(tmp_path / FILES[key])
        assert array.shape == shape and array.dtype == np.float64, key
        assert np.isfinite(array).all()
        np.testing.assert_array_equal(array, generated[key])
    assert (generated["sigma"] > 0).all()  # von Mises stress
    assert not np.array_equal(generated["XY"][:, :, 0], generated["XY"][:, :, 1])  # one mesh per cell


def test_void_geometry(generated):
    xy, rr, theta = generated["XY"], generated["rr"], generated["theta"]
    np.testing.assert_allclose(rr[0], rr[-1])  # rr samples 0..2π with both ends
    assert (rr > 0.2).all() and (rr < 0.4).all()
    for s in range(xy.shape[2]):
        np.testing.assert_allclose(rr[:, s], void_radius(theta[s], np.linspace(0, 2 * np.pi, 42)))
        d = xy[:, :, s] - 0.5
        dist, angle = np.hypot(d[:, 0], d[:, 1]), np.arctan2(d[:, 1], d[:, 0])
        radius = void_radius(theta[s], angle)
        assert (dist >= radius - 1e-12).all()  # no point inside the void
        np.testing.assert_allclose(dist[:N_AROUND], radius[:N_AROUND])  # first ring on the void boundary
        assert xy[:, :, s].min() == 0.0 and xy[:, :, s].max() == 1.0
        for corner in ([0, 0], [1, 0], [1, 1], [0, 1]):
            assert (np.abs(xy[:, :, s] - corner).sum(axis=1) < 1e-12).any()


def test_uniaxial_tension_is_exact():
    """Plate without void on rollers under traction 100: uniform σ_yy = 100, σ_xx = 0 and,
    in incompressible plane strain, σ_zz = 50, so von Mises = sqrt(7500) ≈ 86.60."""
    mesh = MeshQuad.init_tensor(np.linspace(0, 1, 5), np.linspace(0, 1, 5))
    sol = solve_unit_cell(mesh, support="roller")
    np.testing.assert_allclose(sol.stress[1, 1], TRACTION, rtol=1e-9)
    np.testing.assert_allclose(sol.stress[2, 2], TRACTION / 2, rtol=1e-9)
    np.testing.assert_allclose(sol.stress[0, 0], 0.0, atol=1e-7)
    np.testing.assert_allclose(sol.stress[0, 1], 0.0, atol=1e-7)
    np.testing.assert_allclose(sol.von_mises, np.sqrt(7500.0), rtol=1e-9)
    # ε_yy = σ_yy / (4 μ) for incompressible plane strain: the top rises by that much
    top = np.isclose(mesh.p[1], 1.0)
    np.testing.assert_allclose(sol.displacement[top, 1], TRACTION / (4 * SHEAR_MODULUS), rtol=1e-9)
    np.testing.assert_allclose(sol.reaction, [0.0, -TRACTION], atol=1e-8)


def test_clamped_cell_satisfies_equilibrium_and_boundary_tractions():
    mesh = unit_cell_mesh(np.random.default_rng(1).standard_normal(10))
    sol = solve_unit_cell(mesh)
    np.testing.assert_allclose(sol.reaction, [0.0, -TRACTION], atol=1e-8)  # the clamp holds the pull
    x, y = mesh.p
    top = np.isclose(y, 1.0) & (x > 0.05) & (x < 0.95)  # away from the corner singularities
    assert abs(sol.stress[1, 1][top].mean() - TRACTION) < 0.02 * TRACTION
    assert np.abs(sol.stress[1, 1][top] - TRACTION).max() < 0.06 * TRACTION
    sides = (np.isclose(x, 0.0) | np.isclose(x, 1.0)) & (y > 0.1) & (y < 0.9)
    assert np.abs(sol.stress[0, 0][sides]).max() < 0.06 * TRACTION  # free edges: σ_xx ≈ 0
    assert sol.von_mises.max() > 2 * TRACTION  # the void concentrates stress


def test_write_is_all_or_nothing(generated, tmp_path, monkeypatch):
    calls = []

    def failing_save(f, array):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        f.write(b"partial")

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_elasticity(tmp_path, generated)
    assert list((tmp_path / "Meshes").iterdir()) == []  # no file, no temporary file


def test_datamodule_generates_the_configured_count(tmp_path):
    dm = ElasticityDataModule(root=str(tmp_path), n_train=1, n_val=0, n_test=1, gen_samples=3, gen_seed=5)
    dm.prepare_data()
    assert np.load(tmp_path / FILES["sigma"]).shape == (972, 3)
    np.testing.assert_array_equal(np.load(tmp_path / FILES["theta"])[0], np.random.default_rng([5, 0]).standard_normal(10))
    dm.setup("test")
    np.testing.assert_allclose(dm.datasets["test"][0].y[:, 0].numpy(), np.load(tmp_path / FILES["sigma"])[:, 2], rtol=1e-6)
