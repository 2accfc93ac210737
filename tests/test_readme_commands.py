"""The README's "Composing configs" commands (the learning-rate sweep loop included, with
one value) parse and build the run they describe."""

from __future__ import annotations

import pytest

from tests.helpers import REPO, flare_commands


def section_commands() -> list[list[str]]:
    """``flare fit`` command lines of the README section (``$lr`` set to one value)."""
    text = (REPO / "README.md").read_text()
    return flare_commands(text.split("## Composing configs", 1)[1].split("\n## ", 1)[0])


COMMANDS = section_commands()


def test_the_section_has_the_commands():
    assert len(COMMANDS) >= 6
    assert any("--model.lr" in c for c in COMMANDS)  # the sweep loop


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c[2:])[-60:] for c in COMMANDS])
def test_readme_command_parses_and_builds(args, monkeypatch):
    monkeypatch.chdir(REPO)  # the README's relative configs/ paths
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli = run_cli_without_running(args)
    module = cli.model
    if "--model.lr" in args:
        assert module.hparams.lr == 1e-3
        assert cli.trainer.loggers[0].name == "quickstart_lr1e-3"
    if any("EMA" in a or "ema.yaml" in a for a in args):
        assert [type(cb).__name__ for cb in cli.trainer.callbacks].count("EMA") == 1
    if "--trainer.callbacks.decay" in args:
        ema = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "EMA")
        assert ema._kwargs["avg_fn"] is not None and "0.99" in args
    if "wandb.yaml" in " ".join(args):
        assert [type(lg).__name__ for lg in cli.trainer.loggers] == ["CSVLogger", "WandbLogger"]
        assert cli.trainer.loggers[1]._wandb_init["name"] == cli.trainer.loggers[0].name
    if "torch.optim.SGD" in args:
        assert module.build_optimizer(module.parameter_groups()).__class__.__name__ == "SGD"


def run_cli_without_running(args: list[str]):
    from unittest import mock

    from flare_lightning.cli import make_cli

    with mock.patch("sys.argv", ["flare"]):
        return make_cli(args[1:], run=False)  # without run, no subcommand
