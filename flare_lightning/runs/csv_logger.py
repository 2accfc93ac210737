"""The CSV logger of a run folder: ``metrics.csv`` written in place of Lightning's writer.

Lightning's writer deletes an existing ``metrics.csv`` when it starts and appends to it in
place; here the file is rewritten whole through a temporary file at every flush (never
half-written), a resumed run keeps the rows logged before its checkpoint, and nothing is
written before the first metrics arrive, so a refused resume leaves the file as it was.
``hparams.yaml`` is written by ``RunRecords`` once the restore has succeeded.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from flare_lightning.atomic import atomic_write_text
from flare_lightning.runs.folder import RunFolder

METRICS = "metrics.csv"


class MetricsFile:
    """The rows of one ``metrics.csv``: those kept from an earlier part of the run (with a
    step below ``resume_step``), then the new ones; ``save`` rewrites the file.

    Args:
        path: the ``metrics.csv`` file.
        resume_step: first logging step of a resumed run (None: a new run, earlier rows dropped).
    """

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.metrics: list[dict[str, Any]] = []  # rows logged since the last save (Lightning's name)
        self.rows = self._kept(resume_step)

    def _kept(self, resume_step: int | None) -> list[dict[str, Any]]:
        if resume_step is None or not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        # Rows logged after the checkpoint was taken are logged again by the resumed run.
        return [row for row in rows if _step(row) is None or _step(row) < resume_step]

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}
        row["step"] = len(self.rows) + len(self.metrics) if step is None else step
        self.metrics.append(row)

    def save(self) -> None:
        if not self.metrics:
            return
        self.rows += self.metrics
        self.metrics = []
        keys = sorted({key for row in self.rows for key in row})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, out.getvalue())


def _step(row: dict[str, str]) -> int | None:
    value = row.get("step")
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` whose folder is the command's ``RunFolder`` (known on every rank once it
    is claimed) and whose ``metrics.csv`` is a ``MetricsFile``.

    Args:
        folder: the command's run folder.
        resume_step: the global step of the checkpoint a resumed fit continues from (None: new).
        prefix: as in ``CSVLogger``.
        flush_logs_every_n_steps: as in ``CSVLogger``.
    """

    def __init__(self, folder: RunFolder, resume_step: int | None = None, prefix: str = "",
                 flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir=str(folder.planned.parent), name="", version=folder.planned.name, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self.folder = folder
        self.resume_step = resume_step

    @property
    def save_dir(self) -> str:
        return str(self.folder.current.parent)

    @property
    def version(self) -> str:
        return self.folder.current.name

    @property
    def log_dir(self) -> str:
        return str(self.folder.current)

    @rank_zero_only
    def log_hyperparams(self, params: Any = None) -> None:
        """Nothing here: ``RunRecords`` writes ``hparams.yaml`` once the restore has succeeded."""

    @property
    def experiment(self) -> MetricsFile | None:
        if rank_zero_only.rank != 0:
            return None
        if self._experiment is None:
            self._experiment = MetricsFile(Path(self.log_dir) / METRICS, self.resume_step)
        return self._experiment
