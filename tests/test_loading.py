"""A run folder is data: rebuilding its datamodule or module (notebooks, scripts) builds only
this project's classes, or classes the caller names, and refuses anything else before its
module is even imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from datamodules.darcy import DarcyDataModule
from flare_lightning.checkpoint_io import CheckpointError
from flare_lightning.loading import load_datamodule, load_module


def run_folder(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    return tmp_path


@pytest.mark.parametrize("class_path", ["subprocess.Popen", "os.system", "builtins.exec"])
def test_a_config_naming_foreign_code_is_refused(tmp_path, class_path):
    marker = tmp_path / "code ran"
    run = run_folder(tmp_path, {"class_path": class_path, "init_args": {"args": f"touch '{marker}'", "shell": True}})
    with pytest.raises(ValueError, match=f"data.class_path {class_path!r} is not built: only LightningDataModule"):
        load_datamodule(run)
    assert not marker.exists()


def test_a_foreign_module_is_not_even_imported(tmp_path):
    """``this`` prints the Zen of Python when imported: the refusal comes first."""
    run = run_folder(tmp_path, {"class_path": "this.Anything", "init_args": {}})
    script = ("import sys; from flare_lightning.loading import load_datamodule\n"
              f"try:\n    load_datamodule({str(run)!r})\nexcept ValueError:\n    pass\n"
              "assert 'this' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0 and "Zen of Python" not in out.stdout, out.stderr[-2000:]


class OwnDarcy(DarcyDataModule):
    """A user's own datamodule."""


def test_project_datamodules_load_and_own_ones_when_named(tmp_path):
    args = {"root": str(tmp_path / "data"), "n_train": 3}
    assert type(load_datamodule(run_folder(tmp_path, {"class_path": "datamodules.DarcyDataModule", "init_args": args}))) is DarcyDataModule
    run = run_folder(tmp_path, {"class_path": f"{__name__}.OwnDarcy", "init_args": args})
    with pytest.raises(ValueError, match="pass your own class explicitly"):
        load_datamodule(run)
    assert load_datamodule(run, allowed=[OwnDarcy], n_train=5).n_train == 5


def test_a_checkpoint_naming_a_foreign_model_class_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    hparams = {"model": {"class_path": "torch.nn.Identity", "init_args": {}}, "in_dim": 3, "out_dim": 1,
               "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.6", "epoch": 0, "global_step": 0,
                "hyper_parameters": hparams}, tmp_path / "checkpoints" / "best.ckpt")
    with pytest.raises(CheckpointError, match="hyperparameter model.class_path='torch.nn.Identity' is not rebuilt"):
        load_module(tmp_path)
