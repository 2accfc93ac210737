"""SpectralAnalysis: files, scalars and figures of a quickstart fit; schedule, rank-0 and
test-time output folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.plugins.precision import Precision
from torch.utils.data import DataLoader

from flare_lightning.analysis.curves import read_metrics
from flare_lightning.callbacks.sampled import log_image_file
from flare_lightning.callbacks.spectral import SpectralAnalysis
from flare_lightning.training.module import SurrogateModule
from tests.helpers import CONFIGS, tiny_darcy_args, tiny_trainer_args
from tests.quickstart_run import EPOCHS, quickstart_run  # noqa: F401  (session fixture)

PNG = b"\x89PNG\r\n\x1a\n"


def model_config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())["model"]["model"]["init_args"]


def check_summary(summary: dict, cfg: dict) -> None:
    blocks, heads, latents = cfg["num_blocks"], cfg["num_heads"], cfg["num_latents"]
    assert (summary["num_blocks"], summary["num_heads"], summary["num_latents"]) == (blocks, heads, latents)
    assert len(summary["blocks"]) == blocks
    for block in summary["blocks"]:
        for key in ("eigenvalue_abs", "singular_values"):
            mean = torch.tensor(block[key]["mean"], dtype=torch.float64)  # None would fail here
            assert mean.shape == (heads, latents) and torch.isfinite(mean).all()
            assert torch.isfinite(torch.tensor(block[key]["std"], dtype=torch.float64)).all()
        eig = torch.tensor(block["eigenvalue_abs"]["mean"], dtype=torch.float64)
        torch.testing.assert_close(eig[:, 0], torch.ones(heads, dtype=torch.float64))
        assert eig.max() <= 1 + 1e-9
        ranks = torch.tensor(block["effective_rank"]["mean"])
        assert ranks.shape == (heads,) and torch.all((ranks >= 1) & (ranks <= latents))
        for name in ("spectra", "mixing"):
            assert 0 <= block["diversity"][name]["mean"] <= 1


def test_fit_writes_one_json_per_analysed_epoch(quickstart_run):
    spectral = quickstart_run / "spectral"
    epochs = sorted(p.name for p in spectral.glob("epoch_*.json"))
    assert epochs == [f"epoch_{e:04d}.json" for e in range(EPOCHS)]  # epoch 0 and the last one
    cfg = model_config(quickstart_run)
    for name in epochs:
        summary = json.loads((spectral / name).read_text())
        check_summary(summary, cfg)
        assert summary["stage"] == "fit" and summary["num_samples"] == 4 == len(summary["sample_ids"])
        assert summary["points"] == [13 * 13] * 4  # the tiny Darcy grid, under max_points
        seconds = summary["seconds"]
        assert 0 < seconds["analysis"] <= seconds["total"] and seconds["epoch"] > 0
    assert not list(spectral.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_test_stage_writes_into_the_fit_run(quickstart_run):
    summary = json.loads((quickstart_run / "spectral" / "test.json").read_text())
    check_summary(summary, model_config(quickstart_run))
    assert summary["stage"] == "test" and summary["seconds"]["epoch"] is None


def test_figures_are_pngs(quickstart_run):
    spectral = quickstart_run / "spectral"
    names = [f"epoch_{e:04d}_spectra.png" for e in range(EPOCHS)] + ["eff_rank.png", "test_spectra.png"]
    for name in names:
        data = (spectral / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000


def test_scalars_reach_metrics_csv(quickstart_run):
    metrics = read_metrics(quickstart_run)
    for b in range(model_config(quickstart_run)["num_blocks"]):
        for key in (f"spectral/eff_rank/block{b}", f"spectral/diversity_mixing/block{b}", f"spectral/lambda2/block{b}"):
            values = metrics[key][~np.isnan(metrics[key])]
            assert len(values) == EPOCHS and np.isfinite(values).all()
        assert f"test/spectral/eff_rank/block{b}" in metrics
    seconds = metrics["spectral/seconds"]
    assert (seconds[~np.isnan(seconds)] > 0).all()


@pytest.mark.parametrize(
    "every,max_epochs,expected",
    [(3, 10, [0, 3, 6, 9]), (4, 10, [0, 4, 8, 9]), (1, 3, [0, 1, 2]), (5, 2, [0, 1])],
)
def test_schedule(every, max_epochs, expected):
    callback = SpectralAnalysis(every_n_epochs=every)
    due = [
        e for e in range(max_epochs)
        if callback.due(SimpleNamespace(current_epoch=e, max_epochs=max_epochs, should_stop=False))
    ]
    assert due == expected
    assert callback.due(SimpleNamespace(current_epoch=7, max_epochs=100, should_stop=True))


def test_only_rank_zero_works(tmp_path):
    callback = SpectralAnalysis()
    # A trainer with nothing else: touching anything beyond is_global_zero would raise.
    callback.on_train_epoch_end(SimpleNamespace(is_global_zero=False), None)
    callback.on_test_end(SimpleNamespace(is_global_zero=False), None)
    assert callback.last_summary is None and callback._fit_batches is None
    assert not list(tmp_path.iterdir())


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="every_n_epochs"):
        SpectralAnalysis(every_n_epochs=0)


def test_a_later_tests_spectra_go_to_its_own_folder(quickstart_run, tmp_path):
    """``flare test`` on a run's checkpoint writes into its own ``<run>/test/version_N/``: its
    spectra land there, never over the fit's ``<run>/spectral/test.json``."""
    run = tmp_path / "other" / "version_3"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(quickstart_run / "checkpoints" / "best.ckpt", run / "checkpoints" / "best.ckpt")
    module = SurrogateModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt", map_location="cpu")
    logger = SimpleNamespace(log_dir=str(run / "test" / "version_0"), logged=[])
    logger.log_metrics = lambda metrics, step: logger.logged.append(metrics)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[2, 12:] = False
    batch = {"x": torch.rand(3, 20, 3), "y": torch.rand(3, 20, 1), "pos": torch.rand(3, 20, 2), "mask": mask,
             "sample_id": torch.tensor([4, 5, 6])}
    trainer = SimpleNamespace(
        is_global_zero=True, ckpt_path=str(run / "checkpoints" / "best.ckpt"), loggers=[logger],
        precision_plugin=Precision(), current_epoch=0, global_step=5, default_root_dir=str(tmp_path),
        test_dataloaders=DataLoader([batch], batch_size=None),
    )
    callback = SpectralAnalysis(num_samples=2, save_figures=False)
    callback.on_test_end(trainer, module)
    summary = json.loads((run / "test" / "version_0" / "spectral" / "test.json").read_text())
    assert summary["sample_ids"] == [4, 5] and summary["num_samples"] == 2
    assert not (run / "spectral").exists()
    assert "test/spectral/eff_rank/block0" in logger.logged[0]


def test_images_go_to_loggers_that_take_them(tmp_path):
    calls = []
    wandb_like = SimpleNamespace(log_image=lambda **kw: calls.append(kw))
    csv_like = SimpleNamespace(log_metrics=lambda *a, **k: None)
    path = tmp_path / "f.png"
    log_image_file([csv_like, wandb_like], "spectral/spectra", path, step=7)
    assert calls == [{"key": "spectral/spectra", "images": [str(path)], "step": 7}]


@pytest.mark.slow
def test_two_process_ddp_writes_once_from_rank_zero(tiny_darcy_root, tmp_path):
    cmd = [
        sys.executable, "-m", "flare_lightning", "fit", f"--config={CONFIGS / 'quickstart.yaml'}",
        *tiny_darcy_args(tiny_darcy_root), "--data.init_args.batch_size=2", "--trainer.max_epochs=1",
        "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2",
        *tiny_trainer_args(tmp_path, "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"DDP run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    runs = sorted((tmp_path / "ddp").glob("version_*"))
    assert len(runs) == 1, f"expected one run folder (rank 0 only), got {runs}"
    spectral = runs[0] / "spectral"
    assert sorted(p.name for p in spectral.glob("*.json")) == ["epoch_0000.json", "test.json"]
    summary = json.loads((spectral / "epoch_0000.json").read_text())
    assert summary["sample_ids"] == [0, 1, 2, 3]  # the split's first samples, not rank 0's shard
    assert (runs[0] / "predictions" / "test.png").read_bytes().startswith(PNG)
