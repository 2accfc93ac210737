"""Write the test metrics of a command as JSON in its run folder, with what they measured:
the checkpoint (and why it was chosen), the model, the data, the code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L

from flare_lightning.atomic import atomic_write_text
from flare_lightning.runs.provenance import checkpoint_info, data_info, environment
from flare_lightning.runs.records import run_dir

__all__ = ["TestMetricsWriter"]


class TestMetricsWriter(L.Callback):
    """After ``test``, writes ``<run dir>/<filename>`` (rank 0 only): ``{metric: value}``
    (``null`` for non-finite values) plus ``checkpoint`` (path, epoch, global step and why
    it was tested), ``model`` (the tested model's class and options), ``data`` (class, root,
    source: files / generated / proxy, split sizes) and ``environment`` (commit, package
    versions). The run dir is the command's own (``flare_lightning.runs.folder``): the fit's
    folder for its test after training, a new ``<run>/test/version_N`` for a later
    ``flare test``, so a later command never replaces a fit's record.

    Args:
        filename: JSON file name inside the run folder.
    """

    def __init__(self, filename: str = "test_metrics.json") -> None:
        self.filename = filename
        self.last_path: Path | None = None
        self.selection: str | None = None  # why this checkpoint; set by the CLI before it tests

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")
        }
        if not trainer.is_global_zero or trainer.fast_dev_run:  # a debug run leaves no files
            return
        payload: dict = {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items())}
        ckpt = getattr(trainer, "ckpt_path", None)
        selection = self.selection or (f"ckpt_path {ckpt}" if ckpt else "the weights in memory (no ckpt_path)")
        payload["checkpoint"] = {**checkpoint_info(ckpt), "selection": selection}
        payload["model"] = pl_module.hparams.get("model")
        payload["data"] = data_info(getattr(trainer, "datamodule", None))
        payload["environment"] = environment()
        self.selection = None
        payload.update(getattr(pl_module, "test_report", None) or {})  # per-run tables (e.g. forces)
        self.last_path = run_dir(trainer) / self.filename
        atomic_write_text(self.last_path, json.dumps(payload, indent=2, default=str) + "\n")
