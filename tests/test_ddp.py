"""DDP on CPU (gloo, 2 processes): a distributed fit gives the test metric of a
one-process fit on the same data, every test sample is counted once (an odd number of
test samples would show Lightning's padding duplicates), and only rank 0 writes files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args


def data_args(root: Path, batch_size: int) -> list[str]:
    return [
        f"--config={CONFIGS / 'quickstart.yaml'}",
        *tiny_darcy_args(root, n_val=3, n_test=3),  # odd test count: 2 + 1 over two ranks, no padding
        f"--data.init_args.batch_size={batch_size}",
        "--data.init_args.eval_batch_size=1",  # ranks then run unequal numbers of test steps
        "--trainer.max_epochs=2",
        "--trainer.accelerator=cpu",
        "--trainer.callbacks=[]",
    ]


def test_metrics(tmp_path: Path, name: str) -> dict[str, float]:
    runs = sorted((tmp_path / name).glob("version_*"))
    assert len(runs) == 1, f"expected one run folder (rank 0 only), got {runs}"
    record = json.loads((runs[0] / "test_metrics.json").read_text())
    return {k: v for k, v in record.items() if k.startswith("test/")}


test_metrics.__test__ = False  # a helper, not a test


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_darcy_root, tmp_path):
    # Per-rank batch 2 on 2 ranks: the same global batches as batch 4 in one process.
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "flare_lightning", "fit", *data_args(tiny_darcy_root, 2),
           *tiny_trainer_args(two, "ddp"), "--trainer.strategy=ddp", "--trainer.devices=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"DDP run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ddp = test_metrics(two, "ddp")

    one = tmp_path / "one"
    run_cli(["fit", *data_args(tiny_darcy_root, 4), *tiny_trainer_args(one, "single"), "--trainer.devices=1"])
    single = test_metrics(one, "single")

    assert set(ddp) == {"test/loss", "test/rel_l2"}
    for key, value in single.items():
        assert ddp[key] == pytest.approx(value, rel=1e-5), f"{key}: DDP {ddp[key]} vs one process {value}"
    assert ddp["test/loss"] == pytest.approx(ddp["test/rel_l2"], rel=1e-6)


@pytest.mark.slow
def test_fewer_validation_samples_than_ranks_fails_fast_instead_of_hanging(tiny_darcy_root, tmp_path):
    # 3 ranks, 2 validation samples: the third rank would have no batch and skip the
    # evaluation loop while the other two wait for it in the metric all-gather.
    cmd = [sys.executable, "-m", "flare_lightning", "fit", f"--config={CONFIGS / 'quickstart.yaml'}",
           *tiny_darcy_args(tiny_darcy_root, n_train=6, n_val=2, n_test=3), "--data.init_args.batch_size=1",
           "--model.model.init_args.channels=8", "--model.model.init_args.num_blocks=1",
           "--model.model.init_args.num_heads=2", "--model.model.init_args.num_latents=4",
           "--trainer.max_epochs=1", "--trainer.accelerator=cpu", "--trainer.callbacks=[]",
           "--trainer.strategy=ddp", "--trainer.devices=3", *tiny_trainer_args(tmp_path, "ddp3")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "evaluation split of 2 samples cannot be shared by 3 ranks" in proc.stderr, proc.stderr[-4000:]
