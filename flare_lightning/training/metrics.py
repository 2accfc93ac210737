"""Relative L2 error: the loss and the metric of the FLARE paper."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def relative_l2(pred: Tensor, target: Tensor, mask: Tensor | None = None, eps: float = 1e-12) -> Tensor:
    """Per-sample ``||pred - target|| / ||target||`` over points and channels.

    Args:
        pred, target: [B, N, C].
        mask: [B, N] bool, True on real points; padded points are ignored.

    Returns:
        [B] relative errors (computed in float32 at least).
    """
    if pred.shape != target.shape:
        raise ValueError(f"relative_l2: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    diff = (pred - target).to(dtype)
    ref = target.to(dtype)
    if mask is not None:
        m = mask.unsqueeze(-1).to(dtype)
        diff, ref = diff * m, ref * m
    num = diff.pow(2).sum(dim=(-2, -1))
    den = ref.pow(2).sum(dim=(-2, -1))
    return (num / den.clamp_min(eps)).sqrt()


class SampleMean(Metric):
    """Mean over samples of per-sample values [B]; exact under DDP (sums and counts are
    reduced, not per-rank means)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("error_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        """values: [B], one per sample."""
        self.error_sum += values.detach().double().sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return (self.error_sum / self.count.clamp_min(1)).float()


class RelativeL2Error(SampleMean):
    """Mean over samples of the per-sample relative L2 error (``relative_l2``)."""

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """pred, target: [B, N, C]; mask: [B, N] bool."""
        super().update(relative_l2(pred.detach(), target, mask))
