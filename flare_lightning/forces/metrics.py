"""Drag and lift coefficients of predicted and true surface fields: over a test set, per-run
values, absolute errors and R² (exact under DDP: per-run values are gathered, not averaged);
and of one predicted surface, for its prediction file."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from flare_lightning.forces.coefficients import drag_and_lift


def r2_score(pred: Tensor, true: Tensor) -> float:
    """``1 - Σ(pred - true)² / Σ(true - mean)²`` (nan with fewer than 2 runs or constant truth)."""
    total = ((true - true.mean()) ** 2).sum()
    if true.numel() < 2 or total == 0:
        return float("nan")
    return float(1 - ((pred - true) ** 2).sum() / total)


class ForceCoefficientErrors(Metric):
    """Cd and Cl integrated from predicted and from true fields (channel 0 pressure, channels
    1-3 wall shear stress when both have them), per test run.

    Args:
        dynamic_pressure: q∞ in the targets' units (756.18 m²/s² for DrivAerML p; 1 for Cp).
        reference_area: A_ref [m²].
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, dynamic_pressure: float, reference_area: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dynamic_pressure, self.reference_area = dynamic_pressure, reference_area
        self.add_state("sample_ids", default=[], dist_reduce_fx="cat")
        self.add_state("pred", default=[], dist_reduce_fx="cat")  # [runs, 2]: Cd, Cl
        self.add_state("true", default=[], dist_reduce_fx="cat")

    def describe(self) -> dict[str, float]:
        """The reference values the coefficients use."""
        return {"dynamic_pressure": self.dynamic_pressure, "reference_area": self.reference_area}

    def coefficients(self, fields: Tensor, normals: Tensor, areas: Tensor, mask: Tensor) -> Tensor:
        """[B, N, C] fields -> [B, 2] (Cd, Cl)."""
        return drag_and_lift(fields, normals, areas, mask, self.dynamic_pressure, self.reference_area)

    def update(
        self, pred: Tensor, target: Tensor, normals: Tensor, areas: Tensor, mask: Tensor, sample_id: Tensor
    ) -> None:
        """pred, target: [B, N, C]; normals [B, N, 3]; areas [B, N, 1]; mask [B, N]; sample_id [B]."""
        width = min(pred.shape[-1], target.shape[-1])  # wall shear counts only when predicted
        self.pred.append(self.coefficients(pred[..., :width].detach(), normals, areas, mask))
        self.true.append(self.coefficients(target[..., :width], normals, areas, mask))
        self.sample_ids.append(sample_id.long())

    def compute(self) -> dict[str, Tensor]:
        def cat(x):
            return torch.cat(x) if isinstance(x, list) else x

        return {"sample_id": cat(self.sample_ids), "pred": cat(self.pred), "true": cat(self.true)}


def sample_force_coefficients(
    fields: Mapping[str, np.ndarray], dynamic_pressure: float, reference_area: float
) -> dict[str, float]:
    """``cd_pred``/``cl_pred`` (and ``cd_true``/``cl_true`` with a ``target``) of one surface
    from its per-cell ``prediction`` [N, C], ``normals`` [N, 3] and ``areas`` [N, 1]; {} for a
    point set without cell geometry."""
    if "normals" not in fields or "areas" not in fields:
        return {}
    normals, areas = (torch.as_tensor(fields[k])[None] for k in ("normals", "areas"))
    out = {}
    for key, tag in (("prediction", "pred"), ("target", "true")):
        if key in fields:
            values = torch.as_tensor(fields[key])[None]
            cd, cl = drag_and_lift(values, normals, areas, None, dynamic_pressure, reference_area)[0].tolist()
            out.update({f"cd_{tag}": cd, f"cl_{tag}": cl})
    return out


def force_report(values: dict[str, Tensor], names: dict[int, str]) -> tuple[dict[str, float], dict]:
    """(scalar metrics for the logs, a JSON-ready per-run table) from ``ForceCoefficientErrors.compute``."""
    ids = values["sample_id"].tolist()
    pred, true = values["pred"].double().cpu(), values["true"].double().cpu()
    scalars = {}
    for j, key in enumerate(("cd", "cl")):
        err = (pred[:, j] - true[:, j]).abs()
        scalars[f"{key}_mae"] = float(err.mean())
        scalars[f"{key}_max_error"] = float(err.max())
        scalars[f"{key}_r2"] = r2_score(pred[:, j], true[:, j])
    runs = {}
    for i, sid in sorted(enumerate(ids), key=lambda t: t[1]):
        runs[names.get(sid, f"sample_{sid}")] = {
            "cd_pred": float(pred[i, 0]), "cd_true": float(true[i, 0]), "cd_error": float(pred[i, 0] - true[i, 0]),
            "cl_pred": float(pred[i, 1]), "cl_true": float(true[i, 1]), "cl_error": float(pred[i, 1] - true[i, 1]),
        }
    return scalars, runs
