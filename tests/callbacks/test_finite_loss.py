"""A fit whose loss stops being finite fails with an error naming the epoch and step."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from flare_lightning.callbacks.finite_loss import FiniteLossCheck, NonFiniteLossError
from tests.helpers import CONFIGS, REPO, tiny_darcy_args, tiny_trainer_args


def fake_trainer(metrics: dict, epoch: int = 3, step: int = 12) -> SimpleNamespace:
    return SimpleNamespace(callback_metrics=metrics, current_epoch=epoch, global_step=step, sanity_checking=False,
                           state=SimpleNamespace(fn="fit"))


@pytest.mark.parametrize("key", ["train/loss_epoch", "train/loss"], ids=["per_step_logging", "epoch_only_logging"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_epoch_loss_raises(key, value):
    check = FiniteLossCheck()
    with pytest.raises(NonFiniteLossError, match=rf"training loss \({key}\) is {value} at epoch 3 \(global step 12\)"):
        check.on_train_epoch_end(fake_trainer({key: torch.tensor(value)}), None)
    check.on_train_epoch_end(fake_trainer({key: torch.tensor(0.5)}), None)  # finite: no error


def test_non_finite_validation_loss_raises_before_checkpointing():
    with pytest.raises(NonFiniteLossError, match="validation loss"):
        FiniteLossCheck().on_validation_end(fake_trainer({"val/loss": torch.tensor(float("nan"))}), None)


@pytest.mark.slow
def test_diverging_fit_exits_non_zero(tiny_darcy_root, tmp_path):
    # lr 1e30 with a constant schedule blows the weights up within the first epoch.
    cmd = [sys.executable, "-m", "flare_lightning", "fit", f"--config={CONFIGS / 'quickstart.yaml'}",
           *tiny_darcy_args(tiny_darcy_root, n_train=4, n_val=2, n_test=2), "--data.init_args.batch_size=2",
           "--model.model.init_args.channels=8", "--model.model.init_args.num_blocks=1",
           "--model.model.init_args.num_heads=2", "--model.model.init_args.num_latents=4",
           "--model.lr=1e30", "--model.scheduler=constant", "--trainer.gradient_clip_val=null",
           "--trainer.max_epochs=3", "--trainer.callbacks=[]", "--trainer.accelerator=cpu",
           *tiny_trainer_args(tmp_path, "nan")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, f"a diverged fit exited 0:\n{proc.stderr[-3000:]}"
    assert "NonFiniteLossError" in proc.stderr and "at epoch 0" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "nan" / "version_0" / "test_metrics.json").exists()  # no test of NaN weights


def test_epoch_loss_logged_by_the_module_at_epoch_end_is_checked(tmp_path):
    """A module that logs ``train/loss`` in its ``on_train_epoch_end``, after the plain
    callbacks' hook: the check must still see that epoch's value."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    class EpochEndLoss(BoringModel):
        def on_train_epoch_end(self) -> None:
            self.log("train/loss", torch.tensor(float("nan")), on_epoch=True)

    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[FiniteLossCheck()], default_root_dir=tmp_path, accelerator="cpu")
    with pytest.raises(NonFiniteLossError, match=r"training loss \(train/loss\) is nan at epoch 0"):
        trainer.fit(EpochEndLoss())
