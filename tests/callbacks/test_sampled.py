"""Sample selection shared by the analysis callbacks."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, RandomSampler

from flare_lightning.callbacks.sampled import subsample_points, take_samples, unsharded


def batch(counts: list[int], n: int, first_id: int = 0) -> dict[str, torch.Tensor]:
    mask = torch.zeros(len(counts), n, dtype=torch.bool)
    for i, c in enumerate(counts):
        mask[i, :c] = True
    x = torch.arange(len(counts) * n, dtype=torch.float32).view(len(counts), n, 1).expand(-1, -1, 3).clone()
    return {"x": x, "y": x[..., :1] * 2, "pos": x[..., :2], "mask": mask,
            "sample_id": torch.arange(first_id, first_id + len(counts))}


def test_take_samples_stops_at_count_across_batches():
    taken = take_samples([batch([4, 4], 4), batch([4, 4], 4, first_id=2), batch([4], 4, first_id=9)], 3)
    assert [b["sample_id"].tolist() for b in taken] == [[0, 1], [2]]


def test_subsample_points_keeps_a_fixed_ordered_subset():
    b = batch([10, 6, 3], 10)
    out = subsample_points(b, 5)
    assert out["x"].shape == (3, 5, 3) and out["mask"].sum(1).tolist() == [5, 5, 3]
    for i in range(3):
        kept = out["x"][i, out["mask"][i], 0]
        assert torch.all(kept[1:] > kept[:-1])  # original order
        real = b["x"][i, b["mask"][i], 0]
        assert torch.isin(kept, real).all()  # only real points of the same sample
        torch.testing.assert_close(out["y"][i, out["mask"][i], 0], 2 * kept)  # fields stay aligned
    assert torch.equal(out["sample_id"], b["sample_id"])
    torch.testing.assert_close(subsample_points(b, 5)["x"], out["x"])  # deterministic
    assert subsample_points(b, 10) is b
    assert take_samples([b], 3, max_points=5)[0]["x"].shape[1] == 5


def test_unsharded_reads_in_dataset_order_without_touching_the_global_rng():
    data = list(range(10))
    loader = DataLoader(data, batch_size=3, sampler=RandomSampler(data))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = next(iter(unsharded(loader)))
    assert first.tolist() == [0, 1, 2]  # dataset order, not the loader's shuffled order
    assert torch.equal(torch.get_rng_state(), state)  # a DataLoader without a generator draws its base seed here
    assert unsharded(None) == []
