"""The per-epoch summary line carries that epoch's numbers, and on a GPU its peak memory."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.callbacks.epoch_summary import EpochSummary
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args


@pytest.mark.parametrize("accelerator", ["cpu", pytest.param("gpu", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_summary_line_reports_the_epoch(tiny_darcy_root, tmp_path, accelerator):
    cli = run_cli(["fit", f"--config={CONFIGS / 'quickstart.yaml'}", *tiny_darcy_args(tiny_darcy_root),
                   *tiny_trainer_args(tmp_path), "--trainer.max_epochs=2", f"--trainer.accelerator={accelerator}",
                   "--trainer.callbacks=[]", "--trainer.check_val_every_n_epoch=1", "--test_after_fit=false"])
    summary = next(c for c in cli.trainer.callbacks if isinstance(c, EpochSummary))
    line = summary.last_line
    metrics = cli.trainer.callback_metrics
    assert line.startswith("epoch 2/2 ")
    assert f"val/rel_l2 {float(metrics['val/rel_l2']):.4g}" in line
    assert f"train/loss_epoch {float(metrics['train/loss_epoch']):.4g}" in line
    assert ("peak" in line) == (accelerator == "gpu"), line
    if accelerator == "gpu":
        peak_gb = float(line.rsplit("peak ", 1)[1].split(" GB")[0])
        assert 0 < peak_gb <= torch.cuda.max_memory_allocated() / 1e9 + 0.01
