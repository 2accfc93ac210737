"""Training objectives: the reference's Darcy gradient loss against a plain float64 loop,
the grid order of the Darcy data it relies on, and the module's loss/eps options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datamodules.darcy import DarcyDataset
from flare_lightning.training.losses import check_loss_data, darcy_grad_loss, get_loss
from flare_lightning.models import FLARE
from flare_lightning.training.module import SurrogateModule


def reference_darcy_loss(pred: np.ndarray, true: np.ndarray, s: int) -> float:
    """FLARE.py's Darcy objective written out with loops: pred, true [B, s*s] row-major;
    the prediction's boundary ring is zeroed, central differences use 0 outside the grid,
    dx = 1/s (it cancels), rel. L2 terms averaged over samples."""
    dx = 1.0 / s
    total = 0.0
    for p, t in zip(pred, true):
        P, T = p.reshape(s, s).copy(), t.reshape(s, s)
        P_in = np.zeros_like(P)
        P_in[1:-1, 1:-1] = P[1:-1, 1:-1]

        def at(a, i, j):
            return a[i, j] if 0 <= i < s and 0 <= j < s else 0.0

        def grads(a):
            gx = np.array([[(at(a, i, j + 1) - at(a, i, j - 1)) / (2 * dx) for j in range(s)] for i in range(s)])
            gy = np.array([[(at(a, i + 1, j) - at(a, i - 1, j)) / (2 * dx) for j in range(s)] for i in range(s)])
            return gx, gy

        def rel(a, b):
            return math.sqrt(((a - b) ** 2).sum()) / math.sqrt((b**2).sum())

        (px, py), (tx, ty) = grads(P_in), grads(T)
        total += rel(P, T) + 0.1 * (rel(px, tx) + rel(py, ty))
    return total / len(pred)


@pytest.mark.parametrize("s", [5, 9])
def test_darcy_grad_loss_matches_the_reference_form(s):
    torch.manual_seed(s)
    true = torch.randn(3, s * s, 1, dtype=torch.float64)
    pred = true + 0.3 * torch.randn_like(true)
    got = darcy_grad_loss(pred, true, torch.ones(3, s * s, dtype=torch.bool)).mean()
    want = reference_darcy_loss(pred[..., 0].numpy(), true[..., 0].numpy(), s)
    assert got.item() == pytest.approx(want, rel=1e-12)
    assert got.item() > torch.linalg.vector_norm(pred - true, dim=(1, 2)).div(torch.linalg.vector_norm(true, dim=(1, 2))).mean()


def test_darcy_grad_loss_is_zero_at_the_truth_with_zero_boundary():
    true = torch.zeros(2, 7, 7, 1, dtype=torch.float64)
    true[:, 1:-1, 1:-1] = torch.rand(2, 5, 5, 1, dtype=torch.float64)
    true = true.reshape(2, 49, 1)
    assert torch.all(darcy_grad_loss(true.clone(), true) == 0)


def test_darcy_grad_loss_rejects_non_grids():
    with pytest.raises(ValueError, match="square s x s grid.*got 50 points"):
        darcy_grad_loss(torch.randn(1, 50, 1), torch.randn(1, 50, 1))
    with pytest.raises(ValueError, match="data.train_points must be null, got 400"):
        check_loss_data("darcy_grad", type("DM", (), {"train_points": 400})())
    check_loss_data("rel_l2", type("DM", (), {"train_points": 400})())
    with pytest.raises(ValueError, match="data.pad_to_buckets must be false"):
        check_loss_data("darcy_grad", type("DM", (), {"train_points": None, "pad_to_buckets": True})())
    with pytest.raises(ValueError, match="model.loss must be one of .*'darcy_grad'.*got 'l1'"):
        get_loss("l1")


def test_darcy_points_are_row_major_on_the_grid(tiny_darcy_root):
    """The loss reshapes [s*s] -> [s, s]: point i*s + j must be grid node (i, j)."""
    ds = DarcyDataset(tiny_darcy_root, "test.mat", 0, 1, stride=1)
    pos = ds[0].pos.numpy()
    s = math.isqrt(len(pos))
    grid = np.linspace(0.0, 1.0, s, dtype=np.float32)
    ii, jj = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    np.testing.assert_array_equal(pos, np.stack([grid[ii.ravel()], grid[jj.ravel()]], axis=-1))


def test_module_options_reach_the_loss_and_the_optimizer():
    net = FLARE(in_dim=3, out_dim=1, channels=8, num_blocks=1, num_heads=2, num_latents=4)
    module = SurrogateModule(net, in_dim=3, out_dim=1, loss="darcy_grad", eps=1e-6, scheduler="constant")
    assert module.loss_fn is darcy_grad_loss
    assert all(g["eps"] == 1e-6 for g in module.configure_optimizers().param_groups)
    with pytest.raises(ValueError, match="model.loss must be one of"):
        SurrogateModule(net, in_dim=3, out_dim=1, loss="mse")


def test_fit_refuses_grid_loss_on_point_subsets(tiny_darcy_root, tmp_path):
    from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args

    with pytest.raises(ValueError, match="data.train_points must be null, got 49"):
        run_cli(["fit", f"--config={CONFIGS / 'darcy.yaml'}", "--trainer.fast_dev_run=1",
                 "--model.model.init_args.channels=8", "--model.model.init_args.num_blocks=1",
                 "--model.model.init_args.num_heads=2", "--model.model.init_args.num_latents=4",
                 *tiny_darcy_args(tiny_darcy_root), "--data.init_args.stride=1", "--data.init_args.train_points=49",
                 *tiny_trainer_args(tmp_path)])
