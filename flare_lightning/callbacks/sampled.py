"""Base of callbacks that study a fixed handful of samples: every ``every_n_epochs`` of a
fit (the first validation samples) and once after ``test`` (the first test samples)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from flare_lightning.runs.records import run_dir
from flare_lightning.parallel.hooks import local_forward

Batch = dict[str, Tensor]


def take_samples(batches, count: int, max_points: int | None = None) -> list[Batch]:
    """The first ``count`` samples of an iterable of padded batch dicts, on the CPU, each
    cut to at most ``max_points`` real points (see ``subsample_points``)."""
    taken, have = [], 0
    for batch in batches:
        if have >= count:
            break
        keep = min(count - have, len(batch["sample_id"]))
        part = {k: v[:keep].detach().cpu() for k, v in batch.items() if isinstance(v, Tensor)}
        taken.append(part if max_points is None else subsample_points(part, max_points))
        have += keep
    return taken


def subsample_points(batch: Batch, max_points: int) -> Batch:
    """Keep at most ``max_points`` real points per sample: a fixed random subset (seeded by
    the sample id) in the original order. Per-point tensors ([B, N, ...] and ``mask``) are
    re-padded to the new length; the others are kept."""
    mask = batch["mask"]  # [B, N]
    if int(mask.sum(1).max()) <= max_points:
        return batch
    size, n = mask.shape[0], min(int(mask.sum(1).max()), max_points)
    index = torch.zeros(size, n, dtype=torch.long)
    new_mask = torch.zeros(size, n, dtype=torch.bool)
    for i in range(size):
        real = mask[i].nonzero().squeeze(1)
        if len(real) > max_points:
            g = torch.Generator().manual_seed(int(batch["sample_id"][i]))
            real = real[torch.randperm(len(real), generator=g)[:max_points].sort().values]
        index[i, : len(real)], new_mask[i, : len(real)] = real, True
    out = {}
    for key, value in batch.items():
        if key != "mask" and value.dim() >= 2 and value.shape[1] == mask.shape[1]:
            idx = index.view(size, n, *[1] * (value.dim() - 2)).expand(size, n, *value.shape[2:])
            out[key] = torch.gather(value, 1, idx)
        else:
            out[key] = new_mask if key == "mask" else value
    return out


def unsharded(loader) -> Iterable:
    """The batches of ``loader`` in dataset order, without its (distributed or shuffling)
    sampler, so every rank and world size sees the same first samples; ``[]`` for None.
    The loader has its own generator: iterating it leaves the global RNG alone, so adding an
    analysis callback does not change what else draws from it (dropout, a plain RandomSampler,
    worker seeds; this project's training order is seeded by (seed, epoch) and never did)."""
    if loader is None:
        return []
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                      generator=torch.Generator())


def log_image_file(loggers, key: str, path: Path, step: int) -> None:
    """Send a PNG to the loggers that take images: any with ``log_image`` (``WandbLogger``)
    and TensorBoard; others (CSV) are skipped."""
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            from matplotlib.image import imread

            logger.experiment.add_image(key, imread(path), global_step=step, dataformats="HWC")


class SampledAnalysis(L.Callback):
    """Runs ``analyse`` on fixed samples at epochs 0, n, 2n, ... and the last one, and after
    ``test``; on global rank 0 only, with the module in eval mode and no gradients. The
    samples are the first of their split in dataset order, whatever the world size.

    Subclasses set ``subdir`` (their folder in the run directory) and implement ``analyse``.

    Args:
        num_samples: samples studied (the first of the validation split during fit, falling
            back to the training split when there is none; the first test samples at test).
        every_n_epochs: fit epochs between two analyses.
        max_points: study at most this many points per sample (a fixed random subset),
            bounding time and memory on large meshes (None: all points).
    """

    subdir = "analysis"

    def __init__(self, num_samples: int = 4, every_n_epochs: int = 5, max_points: int | None = 65536) -> None:
        if num_samples < 1 or every_n_epochs < 1 or (max_points is not None and max_points < 1):
            raise ValueError(
                f"{type(self).__name__}: num_samples, every_n_epochs and max_points must be >= 1, "
                f"got {num_samples}, {every_n_epochs} and {max_points}"
            )
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.max_points = max_points
        self._fit_batches: list[Batch] | None = None
        self._epoch_start = time.perf_counter()
        self.epoch_seconds: float | None = None

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, batches: list[Batch], tag: str, out_dir: Path) -> None:
        """Study ``batches`` (already on the module's device); write into ``out_dir`` with
        file names starting with ``tag`` (``epoch_0004`` or ``test``)."""
        raise NotImplementedError

    def due(self, trainer: L.Trainer) -> bool:
        """Whether the epoch just finished is analysed: epoch % n == 0, or the last epoch."""
        epoch = trainer.current_epoch
        last = trainer.should_stop or (trainer.max_epochs not in (None, -1) and epoch + 1 >= trainer.max_epochs)
        return epoch % self.every_n_epochs == 0 or bool(last)

    # --- fit -----------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation has run by now: the epoch time includes it.
        self.epoch_seconds = time.perf_counter() - self._epoch_start
        if not trainer.is_global_zero or trainer.sanity_checking or getattr(trainer, "fast_dev_run", False) or not self.due(trainer):
            return
        if self._fit_batches is None:
            loader = self._first_loader(trainer.val_dataloaders) or self._first_loader(trainer.train_dataloader)
            self._fit_batches = take_samples(unsharded(loader), self.num_samples, self.max_points)
        if not self._fit_batches:
            rank_zero_warn(f"{type(self).__name__}: no validation or training samples to analyse")
            return
        tag = f"epoch_{trainer.current_epoch:04d}"
        self._run(trainer, pl_module, self._fit_batches, tag, run_dir(trainer) / self.subdir)

    @staticmethod
    def _first_loader(loaders):
        if isinstance(loaders, (list, tuple)):
            return loaders[0] if loaders else None
        return loaders

    # --- test ----------------------------------------------------------------------
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or getattr(trainer, "fast_dev_run", False):
            return
        batches = take_samples(unsharded(self._first_loader(trainer.test_dataloaders)), self.num_samples, self.max_points)
        if batches:
            self._run(trainer, pl_module, batches, "test", run_dir(trainer) / self.subdir)

    # --- shared --------------------------------------------------------------------
    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, batches: list[Batch], tag: str, out_dir: Path) -> None:
        """Move the batches to the device in the trainer's precision, then ``analyse``."""
        plugin = trainer.precision_plugin
        moved = [plugin.convert_input({k: v.to(pl_module.device) for k, v in b.items()}) for b in batches]
        was_training = pl_module.training
        pl_module.eval()
        try:
            # local_forward: this runs on rank 0 alone, so a context-parallel model must not wait for its group
            with torch.no_grad(), plugin.forward_context(), local_forward(pl_module):
                self.analyse(trainer, pl_module, moved, tag, out_dir)
        finally:
            pl_module.train(was_training)
