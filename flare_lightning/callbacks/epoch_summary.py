"""One printed line per epoch: a record of every epoch that outlives the progress bar
(and readable logs without one: CI, SLURM)."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from flare_lightning.training.device_memory import peak_memory_bytes

TRAIN_KEYS = ("train/loss_epoch", "train/rel_l2")
VAL_KEYS = ("val/loss", "val/rel_l2")


class EpochSummary(L.Callback):
    """Prints ``epoch e/E  train/loss_epoch ..  train/rel_l2 ..  val/loss ..  val/rel_l2 ..  (t s)``
    at the end of each training epoch, with that epoch's own numbers (on a GPU also the
    epoch's peak device memory, CUDA graph pools included: ``(t s, peak g GB)``).

    Lightning reduces a training epoch's metrics at ``on_train_epoch_end``, after the
    epoch's validation has run, so that is where both are current. Validation values are
    shown only for epochs that validated (``check_val_every_n_epoch``).

    Args:
        enabled: print the line.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._start = 0.0
        self._validated = False
        self.last_line: str | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._validated = False
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        metrics = trainer.callback_metrics  # this epoch's reduced training metrics
        keys = TRAIN_KEYS + (VAL_KEYS if self._validated else ())
        parts = [f"{k} {float(metrics[k]):.4g}" for k in keys if k in metrics]
        took = f"{time.perf_counter() - self._start:.1f} s"
        if pl_module.device.type == "cuda":
            took += f", peak {peak_memory_bytes(pl_module.device) / 1e9:.2f} GB"
        self.last_line = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {'  '.join(parts)}  ({took})"
        rank_zero_info(self.last_line)
