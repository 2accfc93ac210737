"""Composable logger configs: an added logger (``configs/logger/wandb.yaml``) takes the
run name and folder of the dataset config's CSV logger, and receives the full config."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger

CSV_CLASS = "lightning.pytorch.loggers.CSVLogger"
# Loggers whose run name and folder follow the CSV logger when the config leaves them unset.
FOLLOWERS = {
    "lightning.pytorch.loggers.WandbLogger": ("name", "save_dir"),
    "lightning.pytorch.loggers.TensorBoardLogger": ("name", "save_dir"),
    "lightning.pytorch.loggers.MLFlowLogger": ("run_name", "save_dir"),
}
UNSET = (None, ".", "", "lightning_logs", "./mlruns")


def name_loggers_like_csv(logger_cfg: Any) -> None:
    """Give loggers without a run name or folder those of the CSV logger, in place.

    ``logger_cfg`` is the parsed ``trainer.logger`` value: a list of ``{class_path,
    init_args}`` namespaces (other values are left alone)."""
    if not isinstance(logger_cfg, list):
        return
    csv = next((lg for lg in logger_cfg if getattr(lg, "class_path", None) == CSV_CLASS), None)
    if csv is None:
        return
    for logger in logger_cfg:
        keys = FOLLOWERS.get(getattr(logger, "class_path", None))
        if keys is None or logger.get("init_args") is None:
            continue
        for key, source in zip(keys, ("name", "save_dir")):
            if logger.init_args.get(key) in UNSET:
                logger.init_args[key] = csv.init_args.get(source)


class SaveConfigToLoggers(SaveConfigCallback):
    """Writes ``config.yaml`` into the run folder (as Lightning does) and sends the whole
    resolved config (model, data, trainer, ...) to every logger other than CSV (wandb's run
    config, TensorBoard's hparams) under the key ``config``."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = self.config.clone().as_dict()
        config.pop("config", None)  # the --config file paths themselves
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                logger.log_hyperparams({"config": config})
