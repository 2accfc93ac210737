"""One printed line per epoch: readable logs without a progress bar (CI, SLURM)."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class EpochSummary(L.Callback):
    """Prints ``epoch e/E  train/loss ..  val/rel_l2 ..  (t s)`` after each validation.

    Args:
        enabled: print the line.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        keys = ("train/loss_epoch", "train/rel_l2", "val/rel_l2")
        parts = [f"{k} {float(trainer.callback_metrics[k]):.4g}" for k in keys if k in trainer.callback_metrics]
        elapsed = time.perf_counter() - self._start
        rank_zero_info(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {'  '.join(parts)}  ({elapsed:.1f} s)")
