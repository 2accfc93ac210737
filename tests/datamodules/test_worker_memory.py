"""Loader workers give freed batch buffers back: their memory stays flat over epochs (without a
fixed glibc mmap threshold, two point-sampling workers grew by 140-180 MB over these 9 epochs, without
end; with it, by a few MB)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from datamodules.drivaerml import DrivAerMLDataModule
from tests.helpers import import_benchmark

# Not fixed_mmap_threshold() here: it would fix this process's threshold, which forked workers inherit.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc and /proc/<pid>/smaps_rollup")


def private_mb(pids: list[int]) -> float:
    """Summed private (anonymous) PSS of the processes, MB."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss_Anon:"):
                total += int(line.split()[1])
    return total / 1024


def test_loader_workers_do_not_grow_over_epochs(tmp_path):
    memory = import_benchmark("drivaerml_memory")
    memory.write_set(tmp_path, 6, 600_000)  # the presampled layout: 6 training runs of 600k points
    dm = DrivAerMLDataModule(root=str(tmp_path), n_val=1, train_points=300_000, num_workers=2, batch_size=1,
                             targets="pressure", persistent_workers=True)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.worker_init_fn is not None
    loader.multiprocessing_context = "spawn"  # fresh workers: none of this process's heap to inherit and touch
    sizes = []
    for epoch in range(12):
        loader.sampler.set_epoch(epoch)
        assert sum(1 for _ in loader) == 5
        if epoch in (2, 11):
            sizes.append(private_mb([w.pid for w in loader._iterator._workers]))
    assert sizes[1] - sizes[0] < 40, f"loader workers grew from {sizes[0]:.0f} to {sizes[1]:.0f} MB over 9 epochs"


def test_the_threshold_is_set_through_glibc():
    """In a fresh process (fixing it here would hide the loader test's subject from its workers)."""
    code = "from datamodules.malloc import fixed_mmap_threshold; import sys; sys.exit(0 if fixed_mmap_threshold() else 1)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_workers_are_seeded_as_lightning_seeds_them(monkeypatch):
    """With ``seed_everything(workers=True)`` (LightningCLI's default) Lightning seeds the workers of
    loaders without a worker_init_fn; ours has one, so it must do the same seeding itself."""
    import random

    import numpy as np
    import torch
    from lightning.fabric.utilities.seed import pl_worker_init_function

    from datamodules.workers import loader_worker_init

    def draws(init) -> tuple:
        torch.manual_seed(1234 + 3)  # what a DataLoader worker 3 starts from
        np.random.seed(0)
        random.seed(0)
        init(3)
        return torch.rand(1).item(), np.random.rand(), random.random()

    monkeypatch.setattr("datamodules.workers.fixed_mmap_threshold", lambda: True)  # not in this process
    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    seeded = draws(loader_worker_init)
    assert seeded == draws(pl_worker_init_function)
    monkeypatch.setenv("PL_SEED_WORKERS", "0")
    assert draws(loader_worker_init) != seeded  # not asked for: the worker's RNGs are left as they are
