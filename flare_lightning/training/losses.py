"""Training objectives of SurrogateModule: relative L2, and the FLARE reference's Darcy
objective (relative L2 of u plus 0.1 x the relative L2 errors of its grid derivatives)."""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from flare_lightning.training.metrics import relative_l2

LossFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def grid_side(num_points: int) -> int:
    """Side s of a square grid of ``num_points`` = s * s points (clear error otherwise).
    Plain int arithmetic (not ``math.isqrt``) so that torch.compile traces it without a break."""
    s = int(num_points**0.5 + 0.5)  # exact for any grid a GPU holds (s < 2**26)
    if s * s != num_points:
        raise ValueError(
            f"model.loss 'darcy_grad' needs samples on a square s x s grid in row-major order, "
            f"got {num_points} points per sample (train on whole Darcy grids: no train_points subsampling)"
        )
    return s


def grid_gradients(u: Tensor, side: int) -> tuple[Tensor, Tensor]:
    """Central differences of a row-major grid field, zero outside the grid.

    u: [B, s*s, C] with point index ``i * s + j`` -> (d/dj, d/di), each [B, s, s, C], in units
    of the grid spacing (relative errors do not depend on it). As the reference
    (``central_diff`` in FLARE.py), the grid is padded with one ring of zeros, so edge points
    difference against 0 (the Dirichlet value of Darcy's u).
    """
    g = F.pad(u.reshape(u.shape[0], side, side, u.shape[-1]), (0, 0, 1, 1, 1, 1))  # [B, s+2, s+2, C]
    d_j = (g[:, 1:-1, 2:] - g[:, 1:-1, :-2]) / 2
    d_i = (g[:, 2:, 1:-1] - g[:, :-2, 1:-1]) / 2
    return d_j, d_i


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1, t.shape[-1])  # [B, s, s, C] -> [B, s*s, C]


def darcy_grad_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None, weight: float = 0.1) -> Tensor:
    """Per-sample ``rel_l2(u) + weight * (rel_l2(du/dj) + rel_l2(du/di))`` -> [B].

    pred, target: [B, s*s, C] de-normalised, row-major on an s x s grid (the Darcy datamodule's
    order); mask: [B, s*s] bool (padded points count as zero). As in the reference
    (``darcy_deriv_loss``), the boundary ring of the prediction is set to zero before
    differencing (u = 0 there), while its value term still sees the whole field.
    """
    side = grid_side(pred.shape[1])
    value = relative_l2(pred, target, mask)
    if mask is not None:
        keep = mask[..., None].to(pred.dtype)
        pred, target = pred * keep, target * keep
    interior = F.pad(pred.reshape(pred.shape[0], side, side, -1)[:, 1:-1, 1:-1], (0, 0, 1, 1, 1, 1))
    pred_j, pred_i = grid_gradients(_flat(interior), side)
    true_j, true_i = grid_gradients(target, side)
    grads = relative_l2(_flat(pred_j), _flat(true_j)) + relative_l2(_flat(pred_i), _flat(true_i))
    return value + weight * grads


LOSSES: dict[str, LossFn] = {"rel_l2": relative_l2, "darcy_grad": darcy_grad_loss}


def get_loss(name: str) -> LossFn:
    """The per-sample loss [B] called ``name`` (``model.loss`` in a config)."""
    if name not in LOSSES:
        raise ValueError(f"model.loss must be one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[name]


def check_loss_data(name: str, datamodule: object) -> None:
    """Fail before training when the data cannot feed the loss (grid losses need whole grids)."""
    if name == "darcy_grad" and getattr(datamodule, "train_points", None):
        raise ValueError(
            "model.loss 'darcy_grad' differentiates on the whole s x s grid: "
            f"data.train_points must be null, got {datamodule.train_points}"
        )
    if name == "darcy_grad" and getattr(datamodule, "pad_to_buckets", False):
        raise ValueError(
            "model.loss 'darcy_grad' needs batches of whole s x s grids: data.pad_to_buckets must be "
            "false (Darcy samples all have the same size, so they need no buckets)"
        )
