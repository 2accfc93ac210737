"""A CSV logger that continues a run's ``metrics.csv`` when the run is resumed.

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts, so a run
resumed with ``--ckpt_path last`` lost every epoch before the kill."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from flare_lightning.checkpoint_io import load_checkpoint
from flare_lightning.atomic import atomic_write_text


class _ContinuingWriter(ExperimentWriter):
    """Keeps the rows of an existing ``metrics.csv`` up to the resumed step and appends."""

    def __init__(self, log_dir: str, resume_step: int) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        # Called by the parent's __init__ instead of deleting the old file.
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            keys = list(reader.fieldnames or [])
        # Rows logged after the checkpoint was taken are logged again by the resumed run.
        kept = [row for row in rows if _step(row) is None or _step(row) < self._resume_step]
        self.metrics_keys = sorted(keys)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.metrics_file_path, out.getvalue())


def _step(row: dict[str, str]) -> int | None:
    value = row.get("step")
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


class ContinuingCSVLogger(CSVLogger):
    """``CSVLogger`` writing into an existing run folder: its ``metrics.csv`` keeps the rows
    logged before ``resume_step`` (the logging step of the checkpoint resumed from) and
    the resumed run appends to it.

    Args:
        save_dir: as in ``CSVLogger``.
        name: as in ``CSVLogger``.
        version: the run folder's version (``version_N`` or a name).
        resume_step: first logging step of the resumed run; rows from it on are dropped.
    """

    def __init__(self, save_dir: str, name: str, version: int | str, resume_step: int) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version)
        self.resume_step = resume_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self.resume_step)
        return self._experiment


def logging_step(ckpt_path: str | Path) -> int:
    """The first logging step of a run resumed from ``ckpt_path``: its global step (a row
    logged after optimizer step k carries step k - 1, so rows before it are history)."""
    return int(load_checkpoint(ckpt_path, mmap=True).get("global_step", 0))
