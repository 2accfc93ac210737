"""What every data-loading worker of the datamodules does first (``DataLoader(worker_init_fn=...)``)."""

from __future__ import annotations

import os

from datamodules.malloc import fixed_mmap_threshold


def loader_worker_init(worker_id: int) -> None:
    """Give freed batch buffers back to the OS (``malloc.fixed_mmap_threshold``), and seed the
    worker's RNGs as Lightning does after ``seed_everything(workers=True)`` (LightningCLI's
    default): Lightning adds its own seeding only to loaders without a ``worker_init_fn``."""
    fixed_mmap_threshold()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
