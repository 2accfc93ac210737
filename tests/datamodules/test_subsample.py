"""Training point subsets: distinct, sorted, uniform over the points, a function of (seed,
epoch, sample) only, and fresh each epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.subsample import PointSubsample


def test_subsets_are_distinct_sorted_and_reproducible():
    sub = PointSubsample(300, seed=5)
    a = sub.indices(1000, sample_id=3)
    assert a.dtype == torch.long and len(a) == 300 and len(torch.unique(a)) == 300
    assert torch.equal(a, a.sort().values) and 0 <= int(a.min()) and int(a.max()) < 1000
    assert torch.equal(a, PointSubsample(300, seed=5).indices(1000, sample_id=3))  # a new object: the same subset
    assert not torch.equal(a, sub.indices(1000, sample_id=4))
    assert not torch.equal(a, PointSubsample(300, seed=6).indices(1000, sample_id=3))
    sub.set_epoch(1)
    assert not torch.equal(a, sub.indices(1000, sample_id=3))
    assert torch.equal(sub.indices(200, sample_id=3), torch.arange(200))  # fewer points than asked: all


def test_every_point_is_kept_equally_often():
    """Over many epochs each of N points is kept with probability k/N (binomial bounds):
    a sampler that favoured some points (the first ones, a stride) fails this."""
    n, k, epochs = 200, 50, 2000
    sub, counts = PointSubsample(k, seed=0), torch.zeros(n)
    for epoch in range(epochs):
        sub.set_epoch(epoch)
        counts[sub.indices(n, sample_id=0)] += 1
    p = k / n
    sigma = (epochs * p * (1 - p)) ** 0.5
    assert (counts - epochs * p).abs().max() < 5 * sigma
    halves = counts.view(2, -1).sum(1)  # no drift between the first and second half of the points
    assert abs(halves[0] - halves[1]) < 5 * sigma * (n / 2) ** 0.5


@pytest.mark.parametrize("seed", [-3, 2**40])
def test_any_integer_seed_works(seed):
    assert len(PointSubsample(10, seed=seed).indices(100, sample_id=0)) == 10


def test_the_subset_of_a_sample_is_applied_to_all_its_fields():
    from torch_geometric.data import Data

    pos, x, y = torch.randn(100, 3), torch.randn(100, 2), torch.randn(100, 1)
    sub = PointSubsample(40, seed=1)
    out = sub(Data(pos=pos, x=x, y=y, sample_id=torch.tensor([7])))
    idx = sub.indices(100, sample_id=7)
    assert torch.equal(out.pos, pos[idx]) and torch.equal(out.x, x[idx]) and torch.equal(out.y, y[idx])
    np.testing.assert_array_equal(out.sample_id.numpy(), [7])
