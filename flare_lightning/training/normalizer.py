"""Per-channel Gaussian normalisation whose statistics travel with the checkpoint."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def channel_moments(chunk: Tensor) -> Tensor:
    """Rows (count, sum, sum of squares) per channel of ``chunk`` [..., C], in float64: [3, C].
    Moments of parts merge by addition, so statistics of a split can be kept per sample."""
    c = chunk.reshape(-1, chunk.shape[-1]).double()
    return torch.stack([torch.full_like(c[0], c.shape[0]), c.sum(0), (c * c).sum(0)])


def stats_from_moments(moments: Iterable[Tensor], eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Mean and std per channel of the rows whose ``channel_moments`` are ``moments``.

    Constant channels get std 1 so that encoding never divides by zero.
    """
    total = None
    for m in moments:
        total = m.clone() if total is None else total + m
    if total is None or total[0, 0] == 0:
        raise ValueError("cannot fit normalisation statistics on an empty training split")
    count, sums, squares = total
    mean = sums / count
    var = (squares / count - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > eps * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
    return mean.float(), std.float()


def channel_stats(chunks: Iterable[Tensor], eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Mean and std per channel over all rows of ``chunks`` ([n_i, C] each), in float64."""
    return stats_from_moments((channel_moments(c) for c in chunks), eps)


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
