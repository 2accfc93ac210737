"""Write the test metrics of a run as JSON next to its ``metrics.csv``, with what they
measured: the checkpoint (and why it was chosen), the data, the code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L

from flare_lightning.atomic import atomic_write_text
from flare_lightning.provenance import checkpoint_info, data_info, environment

__all__ = ["TestMetricsWriter", "atomic_write_text", "run_dir"]


def run_dir(trainer: L.Trainer) -> Path:
    """The run folder: the first logger's ``log_dir`` (``<root>/<name>/version_N``)."""
    if trainer.loggers and getattr(trainer.loggers[0], "log_dir", None):
        return Path(trainer.loggers[0].log_dir)
    return Path(trainer.default_root_dir)


class TestMetricsWriter(L.Callback):
    """After ``test``, writes ``<run dir>/<filename>`` (rank 0 only): ``{metric: value}``
    (``null`` for non-finite values) plus ``checkpoint`` (path, epoch, global step and why
    it was tested), ``data`` (class, root, source: files / generated / proxy, split sizes)
    and ``environment`` (commit, package versions). The run dir is that of the tested
    checkpoint, so a fit's folder collects its test results.

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
        payload["data"] = data_info(getattr(trainer, "datamodule", None))
        payload["environment"] = environment()
        self.selection = None
        payload.update(getattr(pl_module, "test_report", None) or {})  # per-run tables (e.g. forces)
        self.last_path = self.output_dir(trainer) / self.filename
        atomic_write_text(self.last_path, json.dumps(payload, indent=2) + "\n")

    @staticmethod
    def output_dir(trainer: L.Trainer) -> Path:
        """The run folder of the tested checkpoint (``<run>/checkpoints/x.ckpt``), else the log dir."""
        ckpt = getattr(trainer, "ckpt_path", None)
        if ckpt and Path(ckpt).parent.name == "checkpoints":
            return Path(ckpt).parent.parent
        return run_dir(trainer)
