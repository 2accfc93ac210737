"""Random point subsets for training on huge meshes: without replacement, fresh each
epoch, and reproducible (the subset depends only on seed, epoch and sample); and the
samplers that order training and evaluation data on one or many ranks."""

from __future__ import annotations

from collections.abc import Iterator

import warnings

import numpy as np
import torch
from torch.utils.data import DistributedSampler
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
        """The kept point indices of one sample, sorted: a uniform subset drawn by numpy's
        ``Generator.choice`` without replacement, a partial shuffle whose cost grows with
        ``num_points`` rather than with the mesh (a full ``randperm`` of an 8.8M-cell DrivAerML
        surface took several times longer), put in order by marking (linear, not a sort)."""
        if num_nodes <= self.num_points:
            return torch.arange(num_nodes)
        rng = np.random.default_rng([self.seed % 2**64, int(self._epoch), sample_id])
        kept = np.zeros(num_nodes, dtype=bool)
        kept[rng.choice(num_nodes, self.num_points, replace=False, shuffle=False)] = True
        return torch.from_numpy(np.flatnonzero(kept))

    def __call__(self, data: Data) -> Data:
        idx = self.indices(data.num_nodes, int(data.sample_id))
        out = Data(pos=data.pos[idx], y=data.y[idx], sample_id=data.sample_id)
        if getattr(data, "x", None) is not None:
            out.x = data.x[idx]
        return out


class EpochShuffleSampler(DistributedSampler):
    """Training order: a permutation seeded by (seed, epoch), dealt round-robin to ranks.

    Rank r of R takes positions r, r + R, ... of the epoch's permutation (padded by
    wrapping around to a multiple of R, so every rank runs the same number of steps), so
    global batch k of a run on R ranks with per-rank batch b holds the same samples as
    batch k of a one-process run with batch R * b. The epoch is forwarded to a
    ``PointSubsample``, whose subsets depend only on (seed, epoch, sample): data order and
    point subsets are reproducible for any number of ranks and workers.

    It is a ``DistributedSampler``, so Lightning uses it as it is under DDP instead of
    wrapping it. ``state_at``/``load_state_dict`` carry the epoch and the position
    within it: a run resumed from a mid-epoch checkpoint continues where it stopped.

    Args:
        length: number of samples.
        seed: base seed.
        subsample: transform whose epoch follows this sampler's, if any.
        num_replicas: number of ranks R.
        rank: this rank r.
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        subsample: PointSubsample | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.length = length
        self.subsample = subsample
        self._skip = 0  # samples of this rank's share to skip once (set when resuming)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch
        if self.subsample is not None:
            self.subsample.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=gen).tolist()
        while len(order) < self.total_size:
            order += order[: self.total_size - len(order)]
        skip, self._skip = self._skip, 0
        return iter(order[self.rank : self.total_size : self.num_replicas][skip:])

    def __len__(self) -> int:
        return self.num_samples

    def state_at(self, samples_done: int) -> dict[str, int]:
        """Position after ``samples_done`` samples of this rank's share of the current epoch."""
        epoch, done = (self.epoch + 1, 0) if samples_done >= self.num_samples else (self.epoch, samples_done)
        return {"epoch": epoch, "samples_done": done, "num_replicas": self.num_replicas, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at a saved position: the next iteration skips the samples already done."""
        self.set_epoch(int(state["epoch"]))
        same_split = state.get("num_replicas") == self.num_replicas and state.get("seed") == self.seed
        if not same_split and state["samples_done"]:
            warnings.warn(
                f"resuming mid-epoch with num_replicas={self.num_replicas}, seed={self.seed} where the "
                f"checkpoint had {state.get('num_replicas')}, {state.get('seed')}: epoch {state['epoch']} "
                "is replayed from its start",
                stacklevel=2,
            )
            return
        self._skip = int(state["samples_done"])


class ShardSampler(DistributedSampler):
    """Evaluation order: rank r of R takes samples r, r + R, ... once, without padding.

    Lightning's default ``DistributedSampler`` repeats samples so that ranks have equal
    shares; the repeats would be counted twice in test metrics. Here every sample is
    evaluated exactly once across ranks (shares differ by at most one sample, which is
    fine for evaluation, whose steps hold no collective operations). A rank with no
    sample at all would skip the evaluation loop while the others wait for it in the
    metrics' all-gather (a hang), so fewer samples than ranks is refused here, at once.

    Args:
        length: number of samples.
        num_replicas: number of ranks R.
        rank: this rank r.
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=False)
        if 0 < length < num_replicas:
            raise ValueError(
                f"an evaluation split of {length} samples cannot be shared by {num_replicas} ranks: every rank "
                "needs at least one sample (a rank without one would leave the others waiting in the metric "
                "sync). Use at least as many validation/test samples as devices, or fewer devices"
            )
        self.length = length

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))
