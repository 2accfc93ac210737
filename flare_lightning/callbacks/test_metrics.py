"""Write the test metrics of a run as JSON next to its ``metrics.csv``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import lightning as L


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run_dir(trainer: L.Trainer) -> Path:
    """The run folder: the first logger's ``log_dir`` (``<root>/<name>/version_N``)."""
    if trainer.loggers and getattr(trainer.loggers[0], "log_dir", None):
        return Path(trainer.loggers[0].log_dir)
    return Path(trainer.default_root_dir)


class TestMetricsWriter(L.Callback):
    """After ``test``, writes ``{metric: value}`` to ``<run dir>/<filename>`` (rank 0 only);
    the run dir is that of the tested checkpoint, so a fit's folder collects its test results.

    Args:
        filename: JSON file name inside the run folder.
    """

    def __init__(self, filename: str = "test_metrics.json") -> None:
        self.filename = filename
        self.last_path: Path | None = None

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")
        }
        if not trainer.is_global_zero:
            return
        payload = {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items())}
        self.last_path = self.output_dir(trainer) / self.filename
        atomic_write_text(self.last_path, json.dumps(payload, indent=2) + "\n")

    @staticmethod
    def output_dir(trainer: L.Trainer) -> Path:
        """The run folder of the tested checkpoint (``<run>/checkpoints/x.ckpt``), else the log dir."""
        ckpt = getattr(trainer, "ckpt_path", None)
        if ckpt and Path(ckpt).parent.name == "checkpoints":
            return Path(ckpt).parent.parent
        return run_dir(trainer)
