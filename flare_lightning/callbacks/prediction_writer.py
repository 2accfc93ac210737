"""Save ``flare predict`` outputs: de-normalised fields per sample, padding removed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from flare_lightning.callbacks.test_metrics import run_dir
from flare_lightning.atomic import atomic_write


class PredictionWriter(BasePredictionWriter):
    """Writes ``<log dir>/<filename>`` after ``predict``: a dict ``{sample_id: {"pos": [N, d],
    "pred": [N, out]}}`` (float32 tensors on CPU, real points only), loadable with
    ``torch.load(path, weights_only=True)``. Under DDP each rank writes its own
    ``<stem>_rank<r>.pt`` (every sample is predicted by exactly one rank); under context
    parallelism the first rank of each context group writes its group's samples.

    Args:
        filename: file name inside the run's log folder (``<run>/predict/`` for ``flare predict``).
    """

    def __init__(self, filename: str = "predictions.pt") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.last_path: Path | None = None

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        if getattr(trainer.strategy, "context_rank", 0) != 0:
            return  # context parallelism: the group's first rank writes its whole samples
        samples: dict[int, dict[str, torch.Tensor]] = {}
        for batch in _flatten(predictions):
            for i, sample_id in enumerate(batch["sample_id"].tolist()):
                keep = batch["mask"][i]
                samples[int(sample_id)] = {
                    "pos": batch["pos"][i][keep].float().cpu(),
                    "pred": batch["pred"][i][keep].float().cpu(),
                }
        if trainer.fast_dev_run:  # a debug run leaves no files
            return
        name = self.filename
        if trainer.world_size > 1:
            stem, suffix = os.path.splitext(name)
            name = f"{stem}_rank{trainer.global_rank}{suffix}"
        self.last_path = atomic_write(run_dir(trainer) / name, lambda f: torch.save(samples, f))
        if trainer.world_size > 1:
            rank_zero_info(f"predictions written to {self.last_path.parent}/{stem}_rank*{suffix} (one file per rank)")
        else:
            rank_zero_info(f"predictions of {len(samples)} samples written to {self.last_path}")


def _flatten(predictions: Any) -> list[dict]:
    """Lightning returns a list of batch outputs, or one list per dataloader."""
    if predictions and isinstance(predictions[0], list):
        return [b for loader in predictions for b in loader]
    return list(predictions or [])
