"""wandb is optional: composed as a second logger it runs offline next to the CSV logger."""

from __future__ import annotations

import pytest
import yaml

from tests.helpers import CONFIGS, run_cli
from tests.test_cli import TINY_MODEL, tiny_data


def test_wandb_logger_config_runs_offline(tiny_darcy_root, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger_cfg = yaml.safe_load((CONFIGS / "logger" / "wandb.yaml").read_text())
    for logger in logger_cfg["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(tmp_path)
    (tmp_path / "loggers.yaml").write_text(yaml.safe_dump(logger_cfg))
    cli = run_cli(
        ["fit", f"--config={CONFIGS / 'quickstart.yaml'}", f"--config={tmp_path / 'loggers.yaml'}",
         "--trainer.max_epochs=1", "--test_after_fit=false", *TINY_MODEL, *tiny_data(tiny_darcy_root),
         "--trainer.enable_progress_bar=false"]
    )
    names = [type(lg).__name__ for lg in cli.trainer.loggers]
    assert names == ["CSVLogger", "WandbLogger"]
    assert (tmp_path / "quickstart" / "version_0" / "metrics.csv").is_file()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
