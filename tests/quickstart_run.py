"""One tiny fit of ``configs/quickstart.yaml`` (its callbacks included, plus AttentionLogits) on
the tiny Darcy data, shared by the callback and notebook tests.

Import the fixture into a test module (``from tests.quickstart_run import quickstart_run``);
the fit runs once per session whichever modules ask for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args

EPOCHS = 2
_RUNS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory, tiny_darcy_root) -> Path:
    """Run folder (``version_0``) of a 2-epoch quickstart fit, tested after fit."""
    if "run" not in _RUNS:
        out = tmp_path_factory.mktemp("quickstart")
        run_cli(
            [
                "fit",
                f"--config={CONFIGS / 'quickstart.yaml'}",
                *tiny_darcy_args(tiny_darcy_root),
                f"--trainer.max_epochs={EPOCHS}",
                *tiny_trainer_args(out, "quickstart"),
                "--trainer.callbacks+=flare_lightning.callbacks.AttentionLogits",  # for the training-curves notebook
            ]
        )
        _RUNS["run"] = out / "quickstart" / "version_0"
    return _RUNS["run"]
