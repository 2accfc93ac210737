"""The one-line epoch summary prints each epoch's own numbers, the last epoch included, and
on a GPU that epoch's peak device memory."""

from __future__ import annotations

import csv
import logging
import re

import pytest
import torch

from flare_lightning.training.device_memory import peak_memory_bytes
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args
from tests.test_cli import TINY_MODEL

EPOCHS = 3
GPU = pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])


@pytest.mark.parametrize("accelerator", ["cpu", GPU])
def test_each_epoch_line_has_that_epochs_metrics(tiny_darcy_root, tmp_path, caplog, accelerator):
    with caplog.at_level(logging.INFO):
        run_cli(
            ["fit", f"--config={CONFIGS / 'quickstart.yaml'}", *TINY_MODEL, *tiny_darcy_args(tiny_darcy_root),
             "--data.init_args.batch_size=2", f"--trainer.max_epochs={EPOCHS}", "--trainer.callbacks=[]",
             f"--trainer.accelerator={accelerator}", "--test_after_fit=false", *tiny_trainer_args(tmp_path)]
        )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split()[1] for line in lines] == [f"{e}/{EPOCHS}" for e in range(1, EPOCHS + 1)]

    rows = list(csv.DictReader((tmp_path / "test" / "version_0" / "metrics.csv").open()))
    for epoch, line in enumerate(lines):
        printed = dict(re.findall(r"(\S+/\S+) (\S+)", line))
        assert set(printed) == {"train/loss_epoch", "train/rel_l2", "val/loss", "val/rel_l2"}, line
        for key, value in printed.items():
            logged = [float(r[key]) for r in rows if r.get(key) and int(r["epoch"]) == epoch]
            assert len(logged) == 1, (key, epoch)
            assert float(value) == float(f"{logged[0]:.4g}"), (key, epoch, line)
        assert ("peak" in line) == (accelerator == "gpu"), line
    if accelerator == "gpu":  # the counter restarts each epoch: the last line's peak is the counter's value now
        peaks = [float(re.search(r"peak (\S+) GB\)", line).group(1)) for line in lines]
        assert min(peaks) > 0 and abs(peaks[-1] - peak_memory_bytes(torch.device("cuda")) / 1e9) < 0.01, lines
