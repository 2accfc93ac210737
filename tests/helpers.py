"""Helpers shared by tests: run the CLI in-process with small, quiet settings."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def run_cli(args: list[str]):
    """Run ``flare`` in-process with ``args`` and return the ``FlareCLI`` object."""
    from unittest import mock

    from flare_lightning.cli import make_cli

    with mock.patch("sys.argv", ["flare"]):  # pytest's own arguments are not the CLI's
        return make_cli(args)


def resolved_config(args: list[str]) -> dict:
    """The whole configuration ``flare fit`` would run with ``args`` (``--print_config``: parsed
    and merged, nothing instantiated), as a dict."""
    import contextlib
    import io
    from unittest import mock

    import yaml

    from flare_lightning.cli import make_cli

    out = io.StringIO()
    with mock.patch("sys.argv", ["flare"]), contextlib.redirect_stdout(out):
        try:
            make_cli([*args, "--print_config"], run=False)
        except SystemExit as done:  # --print_config prints and exits 0; a bad config exits otherwise
            if done.code:
                raise
    return yaml.safe_load(out.getvalue())


def tiny_trainer_args(tmp_path: Path, name: str = "test") -> list[str]:
    """CLI options that keep a run small, quiet and inside ``tmp_path``."""
    return [
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def tiny_darcy_args(root: Path, n_train: int = 8, n_val: int = 4, n_test: int = 4) -> list[str]:
    """CLI options reading the ``tiny_darcy_root`` files (train.mat, test.mat) with these counts."""
    return [
        f"--data.init_args.root={root}",
        "--data.init_args.train_file=train.mat",
        "--data.init_args.test_file=test.mat",
        f"--data.init_args.n_train={n_train}",
        f"--data.init_args.n_val={n_val}",
        f"--data.init_args.n_test={n_test}",
    ]


def import_benchmark(name: str):
    """A script of ``benchmarks/`` imported as ``benchmarks.<name>`` (the name its own imports and
    pickled functions use, so processes it spawns can import it too)."""
    import importlib

    return importlib.import_module(f"benchmarks.{name}")


def flare_commands(markdown: str) -> list[list[str]]:
    """The words after ``flare`` (or ``python -m flare_lightning``) of every command line in the code
    blocks of ``markdown``: continuation lines joined, comments and what follows a shell operator
    dropped, ``$lr`` given a value; lines with an unbalanced quote (prose, not commands) skipped."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", markdown, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.count("'") % 2:
                continue
            words = shlex.split(line.replace("$lr", "1e-3"), comments=True)
            starts = [i for i, w in enumerate(words) if w in ("flare", "flare_lightning")]
            if not starts:
                continue
            words = words[starts[0] + 1:]
            for op in ("&&", ";", "|"):
                words = words[: words.index(op)] if op in words else words
            commands.append(words)
    return commands


def check_gpu_benchmark_record(name: str, command: list[str], tmp_path: Path) -> None:
    """Run a GPU benchmark script (``command``, with its real kernels) into ``tmp_path``: its record names
    the benchmark, the card, the script and CUDA, and renders as a table of its rows."""
    import os
    import subprocess
    import sys

    import torch

    from benchmarks import render
    from benchmarks.records import read_record
    from benchmarks.sections import BY_BENCHMARK

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    env.pop("TRITON_INTERPRET", None)  # the real kernels
    subprocess.run([sys.executable, *command, "--out", str(tmp_path)], cwd=REPO, env=env, check=True, timeout=600)
    (path,) = tmp_path.glob("*.json")
    record = read_record(path)
    assert record["benchmark"] == name and record["card"] == torch.cuda.get_device_name()
    assert record["rows"] and command[0] in record["paths"] and record["versions"]["cuda"]
    table = render.table(BY_BENCHMARK[name].columns, record["rows"])
    assert len(table) == 2 + len(record["rows"]) and all(line.count("|") == table[0].count("|") for line in table)
