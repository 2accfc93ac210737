"""Per-channel Gaussian normalisation whose statistics travel with the checkpoint."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def channel_stats(chunks: Iterable[Tensor], eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Mean and std per channel over all rows of ``chunks`` ([n_i, C] each), in float64.

    Constant channels get std 1 so that encoding never divides by zero.
    """
    total, sq, count = None, None, 0
    for c in chunks:
        c = c.reshape(-1, c.shape[-1]).double()
        total = c.sum(0) if total is None else total + c.sum(0)
        sq = (c * c).sum(0) if sq is None else sq + (c * c).sum(0)
        count += c.shape[0]
    if count == 0:
        raise ValueError("cannot fit normalisation statistics on an empty training split")
    mean = total / count
    var = (sq / count - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > eps * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
    return mean.float(), std.float()


class Normalizer(nn.Module):
    """``encode(x) = (x - mean) / std`` per channel; ``decode`` inverts it.

    The statistics are buffers, so they are saved in and restored from checkpoints.

    Args:
        dim: number of channels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        """Install fitted statistics ([C] each)."""
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(
                f"normaliser has {self.mean.numel()} channels, got statistics of shape "
                f"{tuple(mean.shape)} / {tuple(std.shape)}"
            )
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.fitted.fill_(True)

    def encode(self, x: Tensor) -> Tensor:
        """[..., C] raw -> normalised."""
        return (x - self.mean) / self.std

    def decode(self, x: Tensor) -> Tensor:
        """[..., C] normalised -> raw units."""
        return x * self.std + self.mean
