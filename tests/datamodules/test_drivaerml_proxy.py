"""DrivAerML proxy (potential flow): panel-method physics against analytic results,
closed outward meshes of car-like bodies, and the npz layout of generated runs."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.drivaerml import DrivAerMLDataModule
from datamodules.drivaerml_io import PROXY_LABEL, Q_INF, read_run_npz
from datamodules.drivaerml_proxy import (
    CarBody,
    generate_proxy_runs,
    panel_pressure,
    parametric_mesh,
    proxy_run,
    source_panel_velocity,
    sphere,
)


def sphere_error(n_u: int, n_v: int) -> np.ndarray:
    """Panel Cp minus the analytic 1 - 9/4 sin²θ at the panel centroids of a unit sphere."""
    mesh = parametric_mesh(sphere(), n_u, n_v)
    centroids, cp = panel_pressure(mesh.vertices, mesh.triangles)
    cos = centroids[:, 0] / np.linalg.norm(centroids, axis=-1)
    return cp - (1.0 - 2.25 * (1.0 - cos**2))


def test_sphere_pressure_matches_potential_flow_and_converges():
    coarse, fine = sphere_error(12, 20), sphere_error(20, 32)
    # Cp spans [-1.25, 1]: 0.045 is 2% of the range
    assert np.abs(fine).max() < 0.045 and np.sqrt(np.mean(fine**2)) < 0.03
    assert np.abs(fine).max() < np.abs(coarse).max()


def test_unit_source_panel_far_field_and_near_field():
    tri = np.array([[[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.0, 0.3, 0.0]]])
    area = 0.5 * 0.2 * 0.3
    far = np.array([[3.0, -4.0, 12.0]])  # |r| = 13: a point source of strength = area
    r = far[0] - tri[0].mean(0)
    expected = area * r / (4 * np.pi * np.linalg.norm(r) ** 3)
    np.testing.assert_allclose(source_panel_velocity(far, tri)[0, 0], expected, rtol=2e-4)
    centroid = tri[0].mean(0)
    above, below = centroid + [0, 0, 1e-7], centroid - [0, 0, 1e-7]
    v = source_panel_velocity(np.stack([above, below, centroid]), tri, np.array([-1, -1, 0]))[:, 0]
    np.testing.assert_allclose(v[:, 2], [0.5, -0.5, 0.5], atol=1e-5)  # σ/2 out of each side
    np.testing.assert_allclose(v[0, :2], v[2, :2], atol=1e-5)  # self term = outer limit


def test_closed_body_emits_no_net_source():
    body = CarBody.random(np.random.default_rng(3))
    mesh = parametric_mesh(body.surface, 10, 16)
    tri = mesh.vertices[mesh.triangles]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area, normal = 0.5 * np.linalg.norm(cross, axis=-1), cross / np.linalg.norm(cross, axis=-1, keepdims=True)
    centroids = tri.mean(1)
    vel = source_panel_velocity(centroids, tri, np.arange(len(tri)))
    sigma = np.linalg.solve(np.einsum("ijc,ic->ij", vel, normal), -normal[:, 0])
    assert abs(np.sum(sigma * area)) < 0.02 * np.sum(np.abs(sigma) * area)  # ~0 net outflow
    _, cp = panel_pressure(mesh.vertices, mesh.triangles)
    assert cp.max() <= 1.0 + 1e-9 and cp.max() > 0.8  # stagnation pressure at nose and tail


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_car_mesh_is_closed_outward_and_car_sized(seed):
    body = CarBody.random(np.random.default_rng(seed))
    mesh = parametric_mesh(body.surface, 14, 22)
    edges = np.sort(mesh.triangles[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # closed, manifold
    tri = mesh.vertices[mesh.triangles]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    box = body.length * body.width * body.height
    assert 0.5 * box < volume < box  # outward orientation; a bluff, boxy body
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    np.testing.assert_allclose(hi - lo, [body.length, body.width, body.height], rtol=0.02)
    assert lo[2] == pytest.approx(body.clearance, abs=0.02)


def test_proxy_run_has_the_drivaerml_layout():
    run = proxy_run(7, panels=300, points=500, seed=0)
    assert run["surface_mesh_centers"].dtype == np.float32 and run["surface_mesh_centers"].shape == (500, 3)
    assert run["surface_fields"].dtype == np.float32 and run["surface_fields"].shape == (500, 4)
    assert str(run["proxy"]).startswith(PROXY_LABEL)
    assert np.isfinite(run["surface_fields"]).all()
    assert (run["surface_fields"][:, 1:] == 0).all()  # no wall shear in potential flow
    cp, x = run["surface_fields"][:, 0] / Q_INF, run["surface_mesh_centers"][:, 0]
    length = x.max() - x.min()
    assert cp.max() <= 1.0
    assert cp[x < x.min() + 0.05 * length].mean() > 0.15  # the nose faces the flow: compression
    assert cp[np.abs(x - x.min() - 0.5 * length) < 0.1 * length].max() < 0.0  # mid-body: suction
    assert len(np.unique(run["surface_mesh_centers"], axis=0)) == 500
    again, other = proxy_run(7, 300, 500, seed=0), proxy_run(8, 300, 500, seed=0)
    np.testing.assert_array_equal(again["surface_fields"], run["surface_fields"])
    assert not np.array_equal(other["surface_mesh_centers"], run["surface_mesh_centers"])


def test_generation_is_atomic_resumable_and_read_back(tmp_path):
    written = generate_proxy_runs(tmp_path, [1, 2], panels=120, points=150, seed=0)
    assert [p.name for p in written] == ["run_1.npz", "run_2.npz"]
    stamp = (tmp_path / "run_1.npz").stat().st_mtime_ns
    assert generate_proxy_runs(tmp_path, [1, 2, 3], panels=120, points=150, seed=0) == [tmp_path / "run_3.npz"]
    assert (tmp_path / "run_1.npz").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_1.npz", "run_2.npz", "run_3.npz"]  # no temp files
    centres, fields = read_run_npz(tmp_path / "run_2.npz")
    assert centres.shape == (150, 3) and fields.shape == (150, 4)


def test_datamodule_generates_and_labels_the_proxy(tmp_path):
    dm = DrivAerMLDataModule(
        root=str(tmp_path),
        proxy=True,
        proxy_train_runs=3,
        proxy_test_runs=1,
        proxy_panels=100,
        proxy_points=120,
        n_val=1,
        pressure_as_cp=True,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.label == "DrivAerML proxy (potential flow)"
    assert dm.datasets["train"].run_ids == [1, 2] and dm.datasets["val"].run_ids == [3]
    _, fields = read_run_npz(tmp_path / "train" / "run_1.npz")
    np.testing.assert_allclose(dm.datasets["train"][0].y[:, 0].numpy(), fields[:, 0] / Q_INF, rtol=1e-6)  # Cp
    assert (tmp_path / "test" / "run_4.npz").exists()
    with pytest.raises(ValueError, match="unset data.split_file"):
        DrivAerMLDataModule(root=str(tmp_path), proxy=True, split_file="split.json")
