"""Normalisation statistics and their round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flare_lightning.training.normalizer import Normalizer, channel_stats


def test_channel_stats_match_numpy_over_chunks():
    chunks = [torch.randn(n, 3) * torch.tensor([1.0, 5.0, 0.1]) + 7.0 for n in (10, 33, 4)]
    mean, std = channel_stats(chunks)
    allrows = torch.cat(chunks).double().numpy()
    np.testing.assert_allclose(mean.numpy(), allrows.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), allrows.std(0), rtol=1e-5)


def test_constant_channel_gets_unit_std_and_round_trip_is_exact():
    data = torch.cat([torch.randn(20, 1), torch.full((20, 1), 4.0)], dim=1)
    norm = Normalizer(2)
    norm.set_stats(*channel_stats([data]))
    assert norm.std[1] == 1.0 and bool(norm.fitted)
    torch.testing.assert_close(norm.decode(norm.encode(data)), data)
    assert norm.encode(data)[:, 0].std().item() == pytest.approx(1.0, rel=0.05)


def test_statistics_travel_in_the_state_dict():
    norm = Normalizer(2)
    norm.set_stats(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    other = Normalizer(2)
    other.load_state_dict(norm.state_dict())
    assert bool(other.fitted) and other.std.tolist() == [3.0, 4.0]


def test_empty_split_and_wrong_width_are_reported():
    with pytest.raises(ValueError, match="empty training split"):
        channel_stats([])
    with pytest.raises(ValueError, match="2 channels"):
        Normalizer(2).set_stats(torch.zeros(3), torch.ones(3))
