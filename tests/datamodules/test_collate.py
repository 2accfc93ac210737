"""Dense batches: samples that fill the batch are stacked, with exactly the values, mask and
fields of the padded (scatter) path."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Data

from datamodules.collate import PaddedCollate, dense_batch


@pytest.mark.parametrize("with_x", [False, True])
def test_full_batches_are_stacked_with_the_values_of_the_padded_path(with_x):
    n = 37
    samples = []
    for i in range(3):
        d = Data(pos=torch.randn(n, 3), y=torch.randn(n, 4), normals=torch.randn(n, 3), sample_id=torch.tensor([i + 5]))
        if with_x:
            d.x = torch.randn(n, 2)
        samples.append(d)
    fields = ("y", "pos", "normals", "areas")
    full = dense_batch(samples, fields)
    padded = dense_batch(samples, fields, n_max=n + 3)  # one more slot per sample: the scatter path
    assert full["padded"] is False and padded["padded"] is True and full["mask"].all()
    assert full.keys() == padded.keys() and "areas" not in full
    for key in ("x", "y", "pos", "normals"):
        assert torch.equal(full[key], padded[key][:, :n]), key
    assert torch.equal(full["sample_id"], torch.tensor([5, 6, 7])) and torch.equal(full["sample_id"], padded["sample_id"])
    assert full["x"].shape == (3, n, 5 if with_x else 3)


def test_a_single_large_sample_collates_without_padding():
    d = Data(pos=torch.randn(1000, 3), y=torch.randn(1000, 1), sample_id=torch.tensor([2]))
    batch = PaddedCollate()([d])
    assert batch["x"].shape == (1, 1000, 3) and not batch["padded"] and batch["mask"].all()
    assert torch.equal(batch["x"][0], d.pos) and torch.equal(batch["y"][0], d.y)
