"""Random point subsets for training on huge meshes: without replacement, fresh each
epoch, and reproducible (the subset depends only on seed, epoch and sample)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler
from torch_geometric.data import Data


class PointSubsample:
    """Transform keeping ``num_points`` distinct points of each sample (all if fewer).

    The epoch lives in a shared-memory tensor, so worker processes see ``set_epoch``
    without being re-created.

    Args:
        num_points: points kept per sample.
        seed: base seed; the subset of sample i at epoch e is a function of (seed, e, i).
    """

    def __init__(self, num_points: int, seed: int = 0) -> None:
        if num_points <= 0:
            raise ValueError(f"train_points must be positive, got {num_points}")
        self.num_points = num_points
        self.seed = seed
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def indices(self, num_nodes: int, sample_id: int) -> torch.Tensor:
        """The kept point indices of one sample, sorted."""
        if num_nodes <= self.num_points:
            return torch.arange(num_nodes)
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + int(self._epoch) * 7919 + sample_id) % (2**63 - 1)
        )
        return torch.randperm(num_nodes, generator=gen)[: self.num_points].sort().values

    def __call__(self, data: Data) -> Data:
        idx = self.indices(data.num_nodes, int(data.sample_id))
        out = Data(pos=data.pos[idx], y=data.y[idx], sample_id=data.sample_id)
        if getattr(data, "x", None) is not None:
            out.x = data.x[idx]
        return out


class EpochShuffleSampler(Sampler[int]):
    """Shuffles sample order with a generator seeded by (seed, epoch) and forwards the
    epoch to a ``PointSubsample``: a resumed run replays the same data order.

    Args:
        length: number of samples.
        seed: base seed.
        subsample: transform whose epoch follows this sampler's, if any.
    """

    def __init__(self, length: int, seed: int = 0, subsample: PointSubsample | None = None) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.subsample = subsample

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.subsample is not None:
            self.subsample.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=gen).tolist())

    def __len__(self) -> int:
        return self.length
