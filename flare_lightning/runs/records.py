"""The records of a run folder (``config.yaml``, ``hparams.yaml``, ``run_info.json``),
written by one callback once what they describe has happened: after the checkpoint (if any)
was restored and the trainer's own checks passed, i.e. when the first training epoch starts
(``fit``) or the evaluation starts. A refused resume or evaluation leaves a run's records as
they were."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger

from flare_lightning.atomic import atomic_path, atomic_write_text
from flare_lightning.runs.provenance import checkpoint_info, data_info, environment
from flare_lightning.runs.folder import RunFolder
from flare_lightning.runs.discovery import RUN_INFO
from flare_lightning.runs.validation import has_validation

CONFIG = "config.yaml"
HPARAMS = "hparams.yaml"
CHECKPOINT_CONFIG = "flare_config"  # the checkpoint key holding the config of the fit that saved it


class RunRecords(SaveConfigCallback):
    """Claims the command's ``RunFolder`` when the trainer sets up (every rank then agrees on
    it; a fit's checkpoints go to its ``checkpoints/``) and writes its records on rank 0 once:

    - ``config.yaml``: the resolved config (``flare fit --config <run>/config.yaml`` reruns it);
    - ``hparams.yaml``: the module's hyperparameters;
    - ``run_info.json``: what the command ran on (data and its source, validation, code,
      the checkpoint it started from, the SLURM job); a resumed fit keeps the first entry and
      adds one per resume under ``resumes``, with the options it changed.

    Other loggers (wandb, TensorBoard) receive the whole config as ``config``. Every
    checkpoint a fit saves carries its config under ``flare_config``: what a resume must
    not change and what an evaluation must match (``flare_lightning.runs.checkpoint_config``).
    The CLI sets ``folder`` and ``changes`` before the trainer runs.
    """

    folder: RunFolder | None = None
    changes: dict[str, list[Any]] | None = None  # option -> [before, now] of a resumed fit
    _config_dict: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.folder is None or not self.folder.writes:
            return
        path = self.folder.claim(trainer.is_global_zero, lambda p: trainer.strategy.broadcast(p))
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None and self.folder.command == "fit":
                callback.dirpath = str(path / "checkpoints")

    def config_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (without the ``--config`` file list), dumped once
        (every checkpoint carries it)."""
        if self._config_dict is None:
            self._config_dict = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            self._config_dict.pop("config", None)
        return self._config_dict

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_CONFIG] = self.config_dict()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit(trainer, pl_module, "fit")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._commit(trainer, pl_module, "validate")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit(trainer, pl_module, "test")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._commit(trainer, pl_module, "predict")

    def _commit(self, trainer: L.Trainer, pl_module: L.LightningModule, command: str) -> None:
        folder = self.folder
        if self.already_saved or folder is None or folder.command != command or not folder.writes:
            return
        self.already_saved = True
        config = self.config_dict()
        if trainer.is_global_zero:
            path = folder.current
            atomic_write_text(path / CONFIG, self.parser.dump(self.config, skip_none=False))
            with atomic_path(path / HPARAMS, suffix=".yaml") as tmp:
                save_hparams_to_yaml(tmp, pl_module.hparams_initial)
            info = self._run_info(trainer, command)
            atomic_write_text(path / RUN_INFO, json.dumps(info, indent=2) + "\n")
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                logger.log_hyperparams({"config": config})

    def _run_info(self, trainer: L.Trainer, command: str) -> dict[str, Any]:
        folder = self.folder
        ckpt = folder.checkpoint
        record: dict[str, Any] = {
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "checkpoint": str(Path(ckpt).resolve()) if ckpt else None,
            "global_step": trainer.global_step,
            "data": data_info(getattr(trainer, "datamodule", None)),
            "environment": environment(),
        }
        if command == "fit":
            record["validation"] = has_validation(trainer)
        else:
            record["checkpoint_info"] = checkpoint_info(ckpt)
        if folder.slurm is not None:
            record["slurm"] = folder.slurm.entry(folder.slot)
        if folder.kind != "continue":
            return record
        if self.changes:
            record["changed"] = self.changes
        previous = _read(folder.current / RUN_INFO)
        if previous is None:
            return record
        return {**previous, "resumes": [*previous.get("resumes", []), record]}


def _read(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def run_dir(trainer: L.Trainer) -> Path:
    """The folder the running command writes into: its ``RunFolder`` (the CLI's), else, for a
    trainer built without the CLI, the first logger's ``log_dir`` or ``default_root_dir``."""
    records = next((cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, RunRecords)), None)
    if records is not None and records.folder is not None:
        return records.folder.current
    if trainer.loggers and getattr(trainer.loggers[0], "log_dir", None):
        return Path(trainer.loggers[0].log_dir)
    return Path(trainer.default_root_dir)
