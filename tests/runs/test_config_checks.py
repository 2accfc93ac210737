"""Config values that make no sense are refused once, before anything is built or written,
naming the option and what was expected (not a ZeroDivisionError deep in torch, not a
run that silently trains nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flare_lightning.runs.config_checks import ConfigError
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args

QUICK = f"--config={CONFIGS / 'quickstart.yaml'}"


@pytest.mark.parametrize("option, expected", [
    ("--model.lr=0", "model.lr=0.0: expected a learning rate > 0"),
    ("--trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1"),
    ("--trainer.limit_train_batches=0", "trainer.limit_train_batches=0: flare fit would run no train batch"),
    ("--trainer.max_epochs=-2", "trainer.max_epochs=-2"),
    ("--trainer.max_epochs=0", "trainer.max_epochs=0"),
    ("--trainer.max_steps=0", "trainer.max_steps=0"),
    ("--model.div_factor=0", "model.div_factor=0.0"),
    ("--model.final_div_factor=0", "model.final_div_factor=0.0"),
    ("--model.pct_start=1.5", "model.pct_start=1.5"),
    ("--model.betas=[1.5,0.9]", "model.betas"),
    ("--model.eps=0", "model.eps=0.0"),
    ("--model.weight_decay=-1", "model.weight_decay=-1.0"),
    ("--trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0"),
    ("--trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch=0"),
    ("--trainer.val_check_interval=0", "trainer.val_check_interval=0"),
    ("--data.init_args.root=", "data.init_args.root='': expected the data folder"),
])
def test_values_that_make_no_sense_are_refused_before_anything_is_written(tmp_path, tiny_darcy_root, option, expected):
    args = ["fit", QUICK, *tiny_darcy_args(tiny_darcy_root), *tiny_trainer_args(tmp_path), option]
    with pytest.raises(ConfigError, match="flare fit: bad config value") as err:
        run_cli(args)
    assert expected in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_infinite_training_with_a_onecycle_schedule_is_refused(tmp_path, tiny_darcy_root):
    with pytest.raises(ConfigError, match="OneCycle schedule .* needs a finite number of steps"):
        run_cli(["fit", QUICK, *tiny_darcy_args(tiny_darcy_root), *tiny_trainer_args(tmp_path), "--trainer.max_epochs=-1"])


@pytest.mark.parametrize("sub", ["test", "predict"])
def test_an_evaluation_that_would_run_nothing_is_refused(tmp_path, tiny_darcy_root, sub):
    with pytest.raises(ConfigError, match=f"trainer.limit_{sub}_batches=0"):
        run_cli([sub, QUICK, *tiny_darcy_args(tiny_darcy_root), *tiny_trainer_args(tmp_path), "--ckpt_path=x.ckpt",
                 f"--trainer.limit_{sub}_batches=0"])


def test_a_data_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="data.init_args.root=.*file'?: is a file, expected a folder"):
        run_cli(["fit", QUICK, f"--data.init_args.root={tmp_path / 'file'}", *tiny_trainer_args(tmp_path)])


def test_a_home_relative_root_means_the_home_folder(tmp_path, monkeypatch, tiny_darcy_root):
    """``~/data`` (a YAML value or --opt=~/x, which the shell does not expand) is the home folder,
    never a folder named ``~`` in the current one."""
    monkeypatch.setenv("HOME", str(tiny_darcy_root.parent))
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", QUICK, *tiny_darcy_args(tiny_darcy_root), f"--data.init_args.root=~/{tiny_darcy_root.name}",
                   *tiny_trainer_args(tmp_path), "--trainer.fast_dev_run=1", "--trainer.callbacks=[]"])
    assert Path(cli.datamodule.root) == tiny_darcy_root
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("content, expected", [
    (b"\x00\x01garbage: [unclosed", "not a readable YAML file"),
    (b"just a string", "expected a YAML mapping of options"),
])
def test_a_garbage_config_file_is_named(tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    with pytest.raises(SystemExit):
        run_cli(["fit", f"--config={bad}"])
    assert f"--config {bad}: {expected}" in capsys.readouterr().err
