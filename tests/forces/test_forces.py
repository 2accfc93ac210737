"""Integrated forces: a closed body in uniform pressure feels no net force, a linear pressure
field gives the buoyancy-like force -∇p·V exactly on a box and to discretisation error on a
sphere; Cd/Cl, their errors and R² over test runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.surface_geometry import normals_and_areas, polygon_vector_areas
from flare_lightning.forces.metrics import ForceCoefficientErrors, force_report, r2_score, sample_force_coefficients
from flare_lightning.forces.coefficients import force_coefficients, surface_force
from tests.mesh_files import subdivided_box


def box_cells(lo, hi, n=3, flip=False):
    points, polys = subdivided_box(lo, hi, n)
    if flip:  # inward winding: the orientation step must undo it
        polys = [p[::-1] for p in polys]
    offsets = np.cumsum([0] + [len(p) for p in polys])
    conn = np.concatenate(polys)
    centres = np.stack([points[p].mean(0) for p in polys])
    normals, areas = normals_and_areas(polygon_vector_areas(points, offsets, conn), centres)
    return torch.as_tensor(centres, dtype=torch.float64), torch.as_tensor(normals).double(), torch.as_tensor(areas).double()


def sphere_cells(radius=1.3, res=80):
    import vtk
    from vtkmodules.util.numpy_support import vtk_to_numpy

    src = vtk.vtkSphereSource()
    src.SetRadius(radius)
    src.SetThetaResolution(res)
    src.SetPhiResolution(res)
    src.Update()
    poly = src.GetOutput()
    from datamodules.surface_geometry import vtp_normals_and_areas

    centres = vtk.vtkCellCenters()
    centres.SetInputData(poly)
    centres.Update()
    c = vtk_to_numpy(centres.GetOutput().GetPoints().GetData()).astype(np.float64)
    n, a = vtp_normals_and_areas(poly, c, "sphere")
    return torch.as_tensor(c), torch.as_tensor(n).double(), torch.as_tensor(a).double()


@pytest.mark.parametrize("flip", [False, True])
def test_box_normals_point_into_the_body_and_areas_sum_to_the_surface(flip):
    lo, hi = np.array([0.5, -1.0, 0.2]), np.array([2.0, 1.5, 1.0])
    centres, normals, areas = box_cells(lo, hi, flip=flip)
    size = hi - lo
    assert areas.sum().item() == pytest.approx(2 * (size[0] * size[1] + size[1] * size[2] + size[0] * size[2]), rel=1e-6)  # float32 storage
    middle = torch.as_tensor((lo + hi) / 2)
    assert ((middle - centres) * normals).sum(-1).min() > 0  # every normal points inwards


def test_uniform_pressure_gives_no_net_force():
    rng = np.random.default_rng(0)
    for centres, normals, areas in (box_cells((0, 0, 0), (1.0, 2.0, 3.0)), sphere_cells()):
        p = torch.full(areas.shape, float(rng.normal(100, 30)), dtype=torch.float64)
        force = surface_force(p[None], normals[None], areas[None])[0]
        assert force.abs().max().item() < 1e-9 * p[0, 0].abs().item() * areas.sum().item()


def test_linear_pressure_gives_minus_gradient_times_volume():
    g = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64)
    lo, hi = np.array([0.0, 0.0, 0.0]), np.array([1.0, 2.0, 3.0])
    centres, normals, areas = box_cells(lo, hi)
    p = 7.0 + centres @ g  # midpoint rule is exact for linear p on planar faces
    force = surface_force(p[None], normals[None], areas[None])[0]
    torch.testing.assert_close(force, -g * float(np.prod(hi - lo)), rtol=1e-6, atol=1e-5)  # float32 normals and areas
    centres, normals, areas = sphere_cells(radius=1.3)
    force = surface_force((centres @ g)[None], normals[None], areas[None])[0]
    volume = 4 / 3 * np.pi * 1.3**3
    torch.testing.assert_close(force, -g * volume, rtol=3e-3, atol=3e-3 * volume)  # polygonal sphere


def test_wall_shear_adds_minus_tau_times_area_and_mask_drops_padding():
    centres, normals, areas = box_cells((0, 0, 0), (1, 1, 1), n=2)
    tau = torch.tensor([0.4, 0.0, -0.1], dtype=torch.float64).expand(len(areas), 3)
    p = torch.zeros(len(areas), dtype=torch.float64)
    force = surface_force(p[None], normals[None], areas[None], tau[None])[0]
    torch.testing.assert_close(force, -tau[0] * areas.sum())
    pad = lambda t: torch.cat([t, torch.full_like(t[:3], 1e6)])[None]  # noqa: E731
    mask = torch.ones(1, len(areas) + 3, dtype=torch.bool)
    mask[0, -3:] = False
    padded = surface_force(pad(p[:, None])[..., 0], pad(normals), pad(areas), pad(tau), mask)[0]
    torch.testing.assert_close(padded, force)


def test_coefficients_errors_and_r2_over_runs():
    """Cd = F_x / (q A), Cl = F_z / (q A); per-run errors and R² against a float64 reference."""
    q, area = 756.18, 2.16
    metric = ForceCoefficientErrors(q, area)
    rng = np.random.default_rng(1)
    ref_pred, ref_true = [], []
    for run in range(4):
        centres, normals, areas = box_cells((0, 0, 0), (1.0 + run, 1.0, 0.5), n=2)
        g_true = torch.as_tensor(rng.normal(size=3))
        g_pred = g_true + 0.1 * torch.as_tensor(rng.normal(size=3))
        fields = [torch.stack([centres @ g, *(0.01 * centres.T)], -1) for g in (g_pred, g_true)]  # p, τx, τy, τz
        mask = torch.ones(1, len(areas), dtype=torch.bool)
        metric.update(fields[0][None].float(), fields[1][None].float(), normals[None].float(), areas[None].float(),
                      mask, torch.tensor([run]))
        for f, out in zip(fields, (ref_pred, ref_true)):
            force = surface_force(f[None, :, 0], normals[None], areas[None], f[None, :, 1:])
            out.append(torch.stack(force_coefficients(force, q, area), -1)[0])
    scalars, runs = force_report(metric.compute(), {i: f"run_{i}" for i in range(4)})
    ref_pred, ref_true = torch.stack(ref_pred), torch.stack(ref_true)
    assert runs["run_2"]["cd_true"] == pytest.approx(ref_true[2, 0].item(), rel=1e-5)
    assert runs["run_3"]["cl_error"] == pytest.approx((ref_pred[3, 1] - ref_true[3, 1]).item(), rel=1e-4, abs=1e-9)
    assert scalars["cd_mae"] == pytest.approx((ref_pred[:, 0] - ref_true[:, 0]).abs().mean().item(), rel=1e-4)
    ss = ((ref_pred[:, 1] - ref_true[:, 1]) ** 2).sum() / ((ref_true[:, 1] - ref_true[:, 1].mean()) ** 2).sum()
    assert scalars["cl_r2"] == pytest.approx(1 - ss.item(), rel=1e-4)
    assert r2_score(ref_true[:, 0], ref_true[:, 0]) == 1.0


@pytest.mark.parametrize("channels", [1, 4])
def test_one_surface_gives_its_coefficients_for_its_prediction_file(channels):
    """``sample_force_coefficients`` (the prediction writer's Cd/Cl of one car): a linear pressure
    on a box gives Cd = -∂p/∂x V / (q A) and Cl = -∂p/∂z V / (q A) exactly, plus -Σ τ A for shear."""
    q, area = 756.18, 2.16
    centres, normals, areas = box_cells((0, 0, 0), (2.0, 1.0, 0.5), n=2)  # volume 1 m³
    g = torch.tensor([3.0, -1.0, 7.0], dtype=torch.float64)
    tau = torch.tensor([0.2, 0.0, -0.4], dtype=torch.float64).expand(len(areas), 3)
    fields = torch.cat([(centres @ g)[:, None], tau], -1)[:, :channels]
    force = -g * 1.0 - (tau[0] * areas.sum() if channels == 4 else 0.0)
    as_np = {"normals": normals.float().numpy(), "areas": areas.float().numpy()}
    out = sample_force_coefficients({"prediction": fields.float().numpy(), **as_np}, q, area)
    assert out == pytest.approx({"cd_pred": force[0].item() / (q * area), "cl_pred": force[2].item() / (q * area)},
                                rel=1e-5)
    both = sample_force_coefficients({"prediction": fields.numpy(), "target": 2 * fields.numpy(), **as_np}, q, area)
    assert both["cd_true"] == pytest.approx(2 * out["cd_pred"], rel=1e-5) and set(both) == {
        "cd_pred", "cl_pred", "cd_true", "cl_true"}
    assert sample_force_coefficients({"prediction": fields.numpy()}, q, area) == {}  # a point set: no geometry
