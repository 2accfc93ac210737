"""Each private Lightning (and torch) API in ``flare_lightning/compat.py``, exercised on the
installed versions: the wrappers return what their callers rely on, the overridden hooks
exist with the parameters the project's overrides take, and a lightning outside the tested
range is named. (Behaviour through the hooks: _parse_ckpt_path in test_evaluation_records,
_instantiate_trainer in test_cli_options, _save_last_checkpoint in callbacks/test_checkpoint.)"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from flare_lightning import compat
from flare_lightning.callbacks.checkpoint import BestAndLastCheckpoint


def test_overridden_hooks_exist_with_the_expected_parameters(monkeypatch):
    compat.check_private_api()
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr(LightningCLI, "_parse_ckpt_path", lambda self, ckpt: None)
    with pytest.raises(RuntimeError, match=r"LightningCLI._parse_ckpt_path has parameters \('self', 'ckpt'\)"):
        compat.check_private_api()


def test_versions_outside_the_tested_range_are_named(monkeypatch):
    assert compat.untested_lightning() is None  # the installed lightning is the tested one
    low, high = compat.TESTED_LIGHTNING
    for version in ("2.5.0", high, "3.0"):
        monkeypatch.setattr(compat, "lightning_version", lambda v=version: v)
        assert f"lightning {version} is outside the range" in compat.untested_lightning()


def test_pyproject_bounds_lightning_to_the_tested_range():
    import tomllib

    from tests.helpers import REPO

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    low, high = compat.TESTED_LIGHTNING
    assert f"lightning>={low},<{high}" in deps


class Probe(L.Callback):
    """Reads the wrappers where the project's callbacks do."""

    def __init__(self) -> None:
        self.processed, self.seen = [], {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.processed.append((batch_idx, compat.batches_processed(trainer)))

    def on_validation_end(self, trainer, pl_module) -> None:
        ckpt = trainer.checkpoint_callback
        if not trainer.sanity_checking:
            self.seen = {"candidates": compat.monitor_candidates(ckpt, trainer),
                         "skips": compat.skips_saving(ckpt, trainer),
                         "on_train_epoch_end": compat.saves_on_train_epoch_end(ckpt, trainer)}


class Boring(BoringModel):
    def validation_step(self, batch, batch_idx):
        self.log("valid_loss", self.step(batch))


def test_loop_and_checkpoint_internals(tmp_path):
    probe = Probe()
    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, monitor="valid_loss", save_last=True)
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1,
                        callbacks=[probe, checkpoint], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(Boring())
    assert probe.processed == [(0, 0), (1, 1), (2, 2)]  # batches done before each one
    assert "valid_loss" in probe.seen["candidates"] and probe.seen["candidates"]["step"] == 3
    assert probe.seen["skips"] is False  # validation end of a real epoch: checkpoints are due
    assert probe.seen["on_train_epoch_end"] is True  # validation ends every epoch: saved at its end


def test_drop_compiled_call_runs_the_module_eagerly():
    layer = torch.nn.Linear(3, 2)
    layer.compile()
    assert layer._compiled_call_impl is not None
    compat.drop_compiled_call(layer)
    x = torch.randn(4, 3)
    assert layer._compiled_call_impl is None
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_built_by_cli_is_true_only_inside_the_cli(tmp_path):
    from unittest import mock

    from flare_lightning.cli import make_cli
    from tests.helpers import CONFIGS, tiny_trainer_args

    assert compat.built_by_cli() is False
    with mock.patch("sys.argv", ["flare"]):
        cli = make_cli([f"--config={CONFIGS / 'quickstart.yaml'}", *tiny_trainer_args(tmp_path)], run=False)
    # the module saw the CLI's config: its hyperparameters hold the model's class path, not the object
    assert cli.model.hparams["model"]["class_path"] == "flare_lightning.models.FLARE"


def test_the_flare_command_quiets_only_the_upstream_noise_it_names():
    """Lightning's pytree helper builds torch's deprecated LeafSpec on every evaluation loop (a
    FutureWarning a user cannot act on): `flare` ignores exactly that message, nothing else."""
    import warnings

    from lightning.pytorch.utilities._pytree import _tree_flatten

    def caught(quiet: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if quiet:
                compat.quiet_upstream_noise()
            _tree_flatten(torch.zeros(1))
            warnings.warn("a warning of our own", FutureWarning)
        return [str(w.message) for w in seen]

    plain = caught(quiet=False)
    if not any("LeafSpec" in m for m in plain):
        pytest.skip("the installed lightning/torch no longer warn about LeafSpec: nothing to quiet")
    assert caught(quiet=True) == ["a warning of our own"]
