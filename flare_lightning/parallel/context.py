"""Context groups: the ranks that share every sample's points, and what each rank holds."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from flare_lightning.kernels.mixer_math import EncodeStats
from flare_lightning.parallel.collectives import gather_shares, merge_encode_stats
from flare_lightning.parallel.mixer import context_mix


class ContextGroup:
    """A process group whose ranks each hold one contiguous share of every sample's points.

    A batch padded to N points is cut into ``size`` shares of L = ceil(N / size) points
    (the last ones padded with masked points): every rank computes on the same number of
    points, so the work is balanced whatever the samples' own lengths, and every rank takes
    the same code path (e.g. ``eval_chunk_size``), hence the same sequence of collectives.

    Args:
        group: the torch.distributed process group (None: the whole world).
    """

    def __init__(self, group=None) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.enabled = True  # False: the model runs on this rank alone (see hooks.local_forward)

    def __deepcopy__(self, memo) -> ContextGroup:
        return self  # a handle on communicators, shared by copies of a model

    @classmethod
    def split_world(cls, size: int) -> tuple[ContextGroup, int, int]:
        """Split the world into consecutive blocks of ``size`` ranks (on one node when
        ``size`` divides the devices per node). Collective: every rank must call it.

        Returns this rank's group, the number of data-parallel groups and its index."""
        world, rank = dist.get_world_size(), dist.get_rank()
        if size < 1 or world % size != 0:
            raise ValueError(f"context parallel size {size} must be a positive divisor of the world size {world}")
        mine = None
        for first in range(0, world, size):
            group = dist.new_group(list(range(first, first + size)))
            if first <= rank < first + size:
                mine = group
        return cls(mine), world // size, rank // size

    def share(self, n: int) -> tuple[int, int, int]:
        """(start, stop, L) of this rank's share of n points; stop - start < L for the tail."""
        length = max(1, -(-n // self.size))
        lo = min(self.rank * length, n)
        return lo, min(lo + length, n), length

    def shard(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """This rank's share of x [B, N, C] and mask [B, N] -> [B, L, C], [B, L] (padded)."""
        n = x.shape[1]
        lo, hi, length = self.share(n)
        if mask is None and n % self.size == 0:
            return x[:, lo:hi], None
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        pad = length - (hi - lo)
        x_local, mask_local = x[:, lo:hi], mask[:, lo:hi]
        if pad:
            x_local = F.pad(x_local, (0, 0, 0, pad))
            mask_local = F.pad(mask_local, (0, pad), value=False)
        return x_local, mask_local

    def unshard(self, y_local: Tensor, n: int) -> Tensor:
        """Every rank's share [B, L, C] (from ``shard`` of n points) joined back into
        [B, n, C] on every rank; differentiable."""
        return gather_shares(y_local, self.group, self.rank, self.size, n)

    def mix(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float, backend: str) -> Tensor:
        """FLARE mixer of this rank's share, exact for the whole sample (see ``mixer``)."""
        return context_mix(q, k, v, mask, scale, backend, self.group)

    def merge_stats(self, stats: EncodeStats) -> EncodeStats:
        """Encode statistics of the whole sample from this rank's (``merge_encode_stats``)."""
        return merge_encode_stats(stats, self.group)
