"""What a run records and trusts: no checkpoint chosen without validation data, test
metrics that say what they measured, outputs readable by colleagues (umask), checkpoints
that never run code, and `best`/`last` that never fall back to an older run."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from datamodules.darcy import DarcyDataModule
from flare_lightning.runs.checkpoint_io import UnsafeCheckpointError
from flare_lightning.runs.loading import load_module
from flare_lightning.runs.discovery import resolve_checkpoint
from tests.helpers import CONFIGS, run_cli, tiny_trainer_args

TINY_MODEL = [
    "--model.model.init_args.channels=8",
    "--model.model.init_args.num_blocks=1",
    "--model.model.init_args.num_heads=2",
    "--model.model.init_args.num_latents=4",
]


class NoValDarcy(DarcyDataModule):
    """Darcy whose validation loader is empty when ``n_val`` is 0 (stands in for the
    datamodules' own ``n_val: 0`` support until both halves of issue 10 meet)."""

    def val_dataloader(self):
        return [] if "val" not in self.datasets else super().val_dataloader()


def no_val_args(data_root: Path, out: Path, name: str) -> list[str]:
    return [
        f"--config={CONFIGS / 'quickstart.yaml'}",
        "--data=tests.runs.test_records.NoValDarcy",
        f"--data.init_args.root={data_root}",
        "--data.init_args.train_file=train.mat",  # absent: generated on first use
        "--data.init_args.test_file=test.mat",
        "--data.init_args.gen_resolution=9",
        "--data.init_args.n_train=4",
        "--data.init_args.n_val=0",
        "--data.init_args.n_test=2",
        "--data.init_args.batch_size=2",
        "--trainer.callbacks=[]",
        "--trainer.accelerator=cpu",
        *TINY_MODEL,
        *tiny_trainer_args(out, name),
    ]


@pytest.fixture(scope="module")
def no_val_run(tmp_path_factory):
    """A 2-epoch fit on locally generated data without validation, under umask 022."""
    out = tmp_path_factory.mktemp("records")
    old = os.umask(0o022)
    try:
        run_cli(["fit", *no_val_args(out / "data", out, "noval"), "--trainer.max_epochs=2"])
    finally:
        os.umask(old)
    return out, out / "noval" / "version_0"


def test_fit_without_validation_keeps_no_best_and_tests_last(no_val_run):
    _, run = no_val_run
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "checkpoints" / "best.ckpt").exists(), "a 'best' checkpoint was selected without validation data"
    record = json.loads((run / "test_metrics.json").read_text())
    assert record["checkpoint"]["path"] == str((run / "checkpoints" / "last.ckpt").resolve())
    assert "no validation data" in record["checkpoint"]["selection"]
    assert json.loads((run / "run_info.json").read_text())["validation"] is False


def test_ckpt_path_best_without_best_checkpoint_is_a_clear_error(no_val_run):
    out, _ = no_val_run
    with pytest.raises(FileNotFoundError, match="trained without validation data .*use --ckpt_path last"):
        resolve_checkpoint("best", out, "noval")


def test_test_metrics_say_what_they_measured(no_val_run):
    _, run = no_val_run
    record = json.loads((run / "test_metrics.json").read_text())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (record["checkpoint"]["epoch"], record["checkpoint"]["global_step"]) == (ckpt["epoch"], ckpt["global_step"])
    assert record["checkpoint"]["global_step"] == 4  # 2 epochs of 2 batches
    assert record["data"]["source"] == "generated"  # made locally, not read
    assert record["data"]["split_sizes"] == {"train": 4, "val": 0, "test": 2}
    assert record["data"]["class"].endswith("NoValDarcy")
    env = record["environment"]
    assert env["versions"]["torch"] == torch.__version__ and env["versions"]["lightning"]
    assert env["commit"] and env["commit"] != "unknown"  # the tests run inside the git checkout
    assert isinstance(record["test/rel_l2"], float)
    info = json.loads((run / "run_info.json").read_text())
    assert info["data"]["source"] == "generated" and info["checkpoint"] is None


def test_outputs_respect_the_umask(no_val_run):
    _, run = no_val_run
    for name in ("test_metrics.json", "run_info.json", "metrics.csv", "config.yaml", "checkpoints/last.ckpt"):
        mode = stat.S_IMODE((run / name).stat().st_mode)
        assert mode == 0o644, f"{name}: mode {oct(mode)} under umask 022"


def test_predictions_respect_the_umask(no_val_run):
    out, run = no_val_run
    old = os.umask(0o022)
    try:
        run_cli(["predict", *no_val_args(out / "data", out, "noval"), "--ckpt_path=last"])
    finally:
        os.umask(old)
    paths = sorted((run / "predict" / "version_0").glob("*.vtu"))
    assert len(paths) == 2  # one file per test sample, in the predict command's own folder
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o644 for path in paths)


class _Payload:
    """Unpickling this writes a marker file: the proof that code ran."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def _plant_malicious_checkpoint(path: Path, marker: Path) -> None:
    payload = _Payload()
    payload.marker = marker
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "evil": payload}, path)


def test_malicious_checkpoint_is_never_unpickled(no_val_run, tmp_path, monkeypatch):
    out, run = no_val_run
    # Older torch versions (which torch>=2.4 allows) unpickle everything unless told not to.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    evil_run = out / "noval" / "version_7"
    (evil_run / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "pwned"
    _plant_malicious_checkpoint(evil_run / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True"):
        load_module(evil_run, "last.ckpt")
    for sub in ("test", "fit"):
        with pytest.raises(UnsafeCheckpointError, match=r"version_7/checkpoints/last.ckpt"):
            run_cli([sub, *no_val_args(out / "data", out, "noval"), "--ckpt_path=last", "--trainer.max_epochs=3"])
    assert not marker.exists(), "loading a checkpoint ran code"


def test_last_never_falls_back_to_an_older_run(tmp_path):
    (tmp_path / "x" / "version_0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "x" / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (tmp_path / "x" / "version_1").mkdir()  # newest run: killed before its first checkpoint
    with pytest.raises(FileNotFoundError, match=r"newest run .*version_1 has no checkpoints/last.ckpt"):
        resolve_checkpoint("last", tmp_path, "x")
    (tmp_path / "x" / "version_1" / "checkpoints").mkdir()
    (tmp_path / "x" / "version_1" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_checkpoint("last", tmp_path, "x").endswith("version_1/checkpoints/last.ckpt")
