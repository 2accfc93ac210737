"""Options a Lightning user tries: each works or says clearly what to do, early."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args
from tests.test_cli import TINY_MODEL

QUICK = [f"--config={CONFIGS / 'quickstart.yaml'}", *TINY_MODEL]


def test_fit_without_checkpointing_tests_the_final_weights(tiny_darcy_root, tmp_path):
    cli = run_cli(["fit", *QUICK, *tiny_darcy_args(tiny_darcy_root), "--trainer.max_epochs=1",
                   "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", *tiny_trainer_args(tmp_path)])
    assert cli.trainer.checkpoint_callback is None
    run = tmp_path / "test" / "version_0"
    assert not (run / "checkpoints").exists()
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["test/rel_l2"] == pytest.approx(float(cli.trainer.callback_metrics["test/rel_l2"]))


def test_fast_dev_run_leaves_no_files(tiny_darcy_root, tmp_path):
    # the quickstart config's analysis callbacks included
    cli = run_cli(["fit", *QUICK, *tiny_darcy_args(tiny_darcy_root), "--trainer.fast_dev_run=1",
                   *tiny_trainer_args(tmp_path)])
    assert torch.isfinite(cli.trainer.callback_metrics["test/rel_l2"])
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == []


@pytest.mark.parametrize("subcommand", ["predict", "test", "validate"])
def test_evaluation_without_checkpoint_stops_before_data_setup(subcommand, tmp_path):
    # a data root that does not exist: setting up data would fail differently
    missing = ["--data.init_args.root", str(tmp_path / "nothing"), "--data.init_args.generate=false"]
    with pytest.raises(SystemExit, match="pass --ckpt_path best"):
        run_cli([subcommand, *QUICK, *missing, *tiny_trainer_args(tmp_path)])


def test_fit_without_config_says_to_pass_one(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit"])
    assert "flare fit --config configs/<dataset>.yaml" in capsys.readouterr().err


def test_predict_says_where_its_output_went(tiny_darcy_root, tmp_path, caplog):
    args = [*QUICK, *tiny_darcy_args(tiny_darcy_root), *tiny_trainer_args(tmp_path)]
    run_cli(["fit", *args, "--trainer.max_epochs=1", "--trainer.callbacks=[]", "--test_after_fit=false"])
    with caplog.at_level(logging.INFO):
        run_cli(["predict", *args, "--ckpt_path=last"])
    path = tmp_path / "test" / "version_0" / "predict" / "version_0"
    assert len(list(path.glob("*.vtu"))) == 4  # one file per test sample
    assert any(f"written to {path}" in r.getMessage() for r in caplog.records)


def test_top_level_help_names_export(capsys):
    """``flare --help`` lists Lightning's subcommands and says how to export a checkpoint."""
    from flare_lightning.cli import cli_main

    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    assert "flare export --ckpt_path" in out and "fit" in out and "predict" in out


def test_float32_matmul_precision_is_set_per_run_and_recorded(tiny_darcy_root, tmp_path, capsys):
    """TF32 on request (the FLARE authors' trainer enables it), true fp32 otherwise; each run
    sets it, so a TF32 run does not leak into the next one in the same process."""
    common = [*QUICK, *tiny_darcy_args(tiny_darcy_root), "--trainer.max_epochs=1", "--trainer.limit_train_batches=1"]
    try:
        run_cli(["fit", *common, "--float32_matmul_precision=high", *tiny_trainer_args(tmp_path, "tf32")])
        assert torch.get_float32_matmul_precision() == "high"
        info = json.loads((tmp_path / "tf32" / "version_0" / "run_info.json").read_text())
        assert info["environment"]["float32_matmul_precision"] == "high"
        run_cli(["fit", *common, *tiny_trainer_args(tmp_path, "fp32")])
        assert torch.get_float32_matmul_precision() == "highest"
        info = json.loads((tmp_path / "fp32" / "version_0" / "run_info.json").read_text())
        assert info["environment"]["float32_matmul_precision"] == "highest"
        with pytest.raises(SystemExit):
            run_cli(["fit", *common, "--float32_matmul_precision=tf32", *tiny_trainer_args(tmp_path, "bad")])
        assert "float32_matmul_precision" in capsys.readouterr().err
    finally:
        torch.set_float32_matmul_precision("highest")
