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
from flare_lightning.runs.checkpoint_io import CheckpointError
from flare_lightning.runs.loading import load_datamodule, load_module


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
    script = ("import sys; from flare_lightning.runs.loading import load_datamodule\n"
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


# The parts of a config.yaml that `flare fit --config configs/quickstart.yaml` wrote before the
# package was split into layers (commit 8bd1de6): every class path it names, and the model's
# options as LightningCLI dumps them (fuse_kv included, an option since removed).
OLD_RUN_CONFIG = """\
seed_everything: 0
trainer:
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {save_dir: SAVE_DIR, name: quickstart, version: null, prefix: '', flush_logs_every_n_steps: 100}
  callbacks:
  - class_path: flare_lightning.callbacks.spectral.SpectralAnalysis
    init_args: {num_samples: 4, every_n_epochs: 10, max_points: 65536, save_figures: true}
  - class_path: flare_lightning.callbacks.predictions.PredictionPlots
    init_args: {num_samples: 3, every_n_epochs: 15, max_points: 65536, channel: 0}
  max_epochs: 27
  default_root_dir: SAVE_DIR
model:
  model:
    class_path: flare_lightning.models.FLARE
    init_args:
      channels: 8
      num_blocks: 1
      num_heads: 2
      num_latents: 4
      kv_layers: 1
      ffn_layers: 1
      io_layers: 2
      mlp_ratio: 1.0
      act: gelu
      norm: layernorm
      scale: 1.0
      mixer_backend: auto
      mlp_chunk_size: null
      checkpoint_blocks: false
      eval_chunk_size: null
      fuse_kv: false
      mlp_backend: torch
      compile: false
  lr: 0.003
  scheduler: onecycle
  loss: rel_l2
data:
  class_path: datamodules.DarcyDataModule
  init_args: {root: DATA_ROOT, n_train: 3, n_val: 1, n_test: 1, gen_resolution: 9, batch_size: 2}
"""


def test_a_run_folder_saved_before_the_layered_package_still_loads(tmp_path):
    """Its config builds every class it names through the CLI, its datamodule and a checkpoint
    carrying its model hyperparameters load for notebooks."""
    from unittest import mock

    from flare_lightning.callbacks import PredictionPlots, SpectralAnalysis
    from flare_lightning.cli import make_cli
    from flare_lightning.models import FLARE
    from flare_lightning.training.module import SurrogateModule

    text = OLD_RUN_CONFIG.replace("SAVE_DIR", str(tmp_path / "runs")).replace("DATA_ROOT", str(tmp_path / "data"))
    config = yaml.safe_load(text)
    run = tmp_path / "runs" / "quickstart" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(text)

    with mock.patch("sys.argv", ["flare"]):
        cli = make_cli(["--config", str(run / "config.yaml")], run=False)  # as `flare test --config` reads it
    assert type(cli.model.model) is FLARE and type(cli.datamodule) is DarcyDataModule
    assert {SpectralAnalysis, PredictionPlots} <= {type(cb) for cb in cli.trainer.callbacks}
    assert type(load_datamodule(run)) is DarcyDataModule

    model_hparams = config["model"]["model"]
    module = SurrogateModule(FLARE(in_dim=3, out_dim=1, **model_hparams["init_args"]), in_dim=3, out_dim=1)
    for norm in (module.input_norm, module.target_norm):
        norm.set_stats(torch.rand_like(norm.mean), 1 + torch.rand_like(norm.std))
    hparams = {**{k: v for k, v in config["model"].items() if k != "model"}, "in_dim": 3, "out_dim": 1,
               "model": {"class_path": model_hparams["class_path"],
                         "init_args": {**model_hparams["init_args"], "in_dim": 3, "out_dim": 1}},
               "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": "2.6.6", "epoch": 0, "global_step": 0,
                "hyper_parameters": hparams}, run / "checkpoints" / "best.ckpt")
    loaded = load_module(run)
    assert type(loaded.model) is FLARE and len(loaded.model.blocks) == 1
    x = torch.rand(1, 9, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), module.eval()(x), rtol=0, atol=0)
