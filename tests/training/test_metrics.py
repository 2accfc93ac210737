"""Relative L2 loss and the torchmetrics metric against a float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flare_lightning.training.metrics import RelativeL2Error, relative_l2


def numpy_rel_l2(pred, target, mask):
    out = []
    for p, t, m in zip(pred, target, mask):
        out.append(np.linalg.norm(p[m] - t[m]) / np.linalg.norm(t[m]))
    return np.array(out)


def random_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(3, 17, 2, generator=g, dtype=torch.float64)
    target = torch.randn(3, 17, 2, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 17, generator=g) > 0.3
    mask[:, 0] = True
    return pred, target, mask


def test_relative_l2_matches_numpy_with_mask():
    pred, target, mask = random_batch(0)
    pred_padded = pred.clone()
    pred_padded[~mask] = 1e6  # must be ignored
    got = relative_l2(pred_padded, target, mask)
    np.testing.assert_allclose(got.numpy(), numpy_rel_l2(pred.numpy(), target.numpy(), mask.numpy()), rtol=1e-12)


def test_metric_is_mean_over_samples_across_updates():
    metric = RelativeL2Error()
    expected = []
    for seed in range(3):
        pred, target, mask = random_batch(seed)
        metric.update(pred, target, mask)
        expected.append(numpy_rel_l2(pred.numpy(), target.numpy(), mask.numpy()))
    assert metric.compute().item() == pytest.approx(np.concatenate(expected).mean(), rel=1e-6)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="differ"):
        relative_l2(torch.zeros(1, 3, 1), torch.zeros(1, 4, 1))
