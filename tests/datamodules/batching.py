"""Check shared by dataset tests: a padded batch gives each sample the model output it
gets alone (padding must not leak into real points)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from datamodules.collate import PaddedCollate
from flare_lightning.models import FLARE


def assert_batch_matches_singles(dataset: Dataset, in_dim: int, out_dim: int) -> None:
    """Run a small FLARE on all samples of ``dataset`` as one padded batch and one by one."""
    torch.manual_seed(0)
    model = FLARE(in_dim, out_dim, channels=16, num_blocks=2, num_heads=2, num_latents=8).eval()
    samples = [dataset[i] for i in range(len(dataset))]
    collate = PaddedCollate()
    batch = collate(samples)
    with torch.no_grad():
        batched = model(batch["x"], batch["mask"])  # [B, N_max, out]
        for i, sample in enumerate(samples):
            single = collate([sample])
            alone = model(single["x"], single["mask"])[0]  # [N_i, out]
            n = sample.num_nodes
            assert batch["mask"][i].sum() == n
            torch.testing.assert_close(batched[i, :n], alone, rtol=1e-4, atol=1e-5)
