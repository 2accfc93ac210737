"""Record at fit start what a run is: data, code, and the checkpoint it started from."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L

from flare_lightning.callbacks.test_metrics import run_dir
from flare_lightning.atomic import atomic_write_text
from flare_lightning.provenance import data_info, environment
from flare_lightning.runs import RUN_INFO
from flare_lightning.validation import has_validation


class RunInfoWriter(L.Callback):
    """At fit start writes ``<run>/run_info.json`` (rank 0): the data (class, root,
    source: ``files``, ``generated`` (made locally) or ``proxy``; split sizes), whether
    there is validation data (without it no best checkpoint is kept), the commit and
    package versions, and the checkpoint the fit started from. A resumed run keeps the
    first record and appends one entry per resume under ``resumes``.

    Args:
        enabled: write the file.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.last_path: Path | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_train_start: the validation loaders are known by now (see has_validation).
        if not self.enabled or not trainer.is_global_zero or trainer.fast_dev_run:  # fast_dev_run: no run folder
            return
        path = run_dir(trainer) / RUN_INFO
        ckpt = getattr(trainer, "ckpt_path", None)
        record = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "checkpoint": str(Path(ckpt).resolve()) if ckpt else None,
            "global_step": trainer.global_step,
            "data": data_info(getattr(trainer, "datamodule", None)),
            "validation": has_validation(trainer),
            "environment": environment(),
        }
        previous = _read(path)
        if previous is not None and ckpt:
            payload = {**previous, "resumes": [*previous.get("resumes", []), record]}
        else:
            payload = record
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
        self.last_path = path


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
