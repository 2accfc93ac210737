"""The per-sample relative L2 of samples whose points are split over a context group."""

from __future__ import annotations

import torch
from torch import Tensor

from flare_lightning.parallel.collectives import all_reduce_sum


def relative_l2_sharded(pred: Tensor, target: Tensor, mask: Tensor | None, group, eps: float = 1e-12) -> Tensor:
    """``metrics.relative_l2`` of whole samples from this rank's share of their points:
    the sums of squares over each rank's points are added over ``group`` (one all-reduce
    of [2, B], differentiable), then divided. pred, target: [B, L, C]; mask: [B, L] -> [B]."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    diff, ref = (pred - target).to(dtype), target.to(dtype)
    if mask is not None:
        keep = mask.unsqueeze(-1).to(dtype)
        diff, ref = diff * keep, ref * keep
    sums = all_reduce_sum(torch.stack([diff.pow(2).sum(dim=(-2, -1)), ref.pow(2).sum(dim=(-2, -1))]), group)
    return (sums[0] / sums[1].clamp_min(eps)).sqrt()
