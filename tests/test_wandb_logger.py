"""wandb is optional: composed after any dataset config it runs offline next to the CSV
logger, under the dataset's run name, with the whole resolved config as its run config."""

from __future__ import annotations

import json

import pytest

from tests.helpers import CONFIGS, run_cli
from tests.test_cli import TINY_MODEL, tiny_data


def test_wandb_logger_config_composes_with_darcy(tiny_darcy_root, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # the configs' relative runs/ lands here
    composed = [f"--config={CONFIGS / 'darcy.yaml'}", f"--config={CONFIGS / 'logger' / 'wandb.yaml'}"]
    cli = run_cli(
        ["fit", *composed, "--trainer.max_epochs=1", "--test_after_fit=false", *TINY_MODEL,
         *tiny_data(tiny_darcy_root), "--trainer.enable_progress_bar=false"]
    )
    csv, wandb_logger = cli.trainer.loggers
    assert (type(csv).__name__, type(wandb_logger).__name__) == ("RunCSVLogger", "WandbLogger")
    assert (tmp_path / "runs" / "darcy" / "version_0" / "metrics.csv").is_file()
    run = wandb_logger.experiment
    assert run.name == "darcy"
    config = dict(run.config)["config"]  # the run's config as wandb holds it
    run.finish()
    # finish() can return before the service has flushed the offline file (seen once in CI:
    # the file held only its header); teardown waits for the service process to exit
    wandb.teardown()
    assert config["model"]["model"]["init_args"]["channels"] == 16
    assert config["data"]["init_args"]["n_train"] == 8
    assert config["data"]["class_path"] == "datamodules.DarcyDataModule"
    assert config["trainer"]["max_epochs"] == 1 and config["trainer"]["gradient_clip_val"] == 1.0
    # and it is in the offline run file that `wandb sync` uploads
    files = list((tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and b'"class_path":"datamodules.DarcyDataModule"' in files[0].read_bytes()

    # --ckpt_path best finds the Darcy run (not another dataset's)
    run_cli(["test", *composed, "--ckpt_path=best", *TINY_MODEL, *tiny_data(tiny_darcy_root),
             "--trainer.enable_progress_bar=false"])
    metrics = json.loads((tmp_path / "runs" / "darcy" / "version_0" / "test" / "version_0" / "test_metrics.json").read_text())
    assert metrics["test/rel_l2"] > 0
