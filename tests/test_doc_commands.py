"""Every `flare fit/test/validate/predict` command shown in README.md and docs/ parses: its configs
exist and compose, and each option is one the CLI has, with a value of the right type (parsed as
``--print_config`` does, nothing built; data paths such as /data/... are not read)."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.helpers import REPO, resolved_config

SUBCOMMANDS = ("fit", "test", "validate", "predict")


def doc_commands() -> list[tuple[str, list[str]]]:
    """(where, options) of every command line in the pages' code blocks, continuation lines joined;
    the subcommand and ``--ckpt_path`` (a run's file) left out, shell variables given a value;
    lines with a placeholder (``...``) or ``--help`` skipped."""
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", page.read_text(), flags=re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                words = shlex.split(line.replace("$lr", "1e-3"), comments=True) if line.count("'") % 2 == 0 else []
                starts = [i for i, w in enumerate(words[:-1]) if (w == "flare" or w == "flare_lightning") and words[i + 1] in SUBCOMMANDS]
                if not starts:
                    continue
                words = words[starts[0] + 2:]
                for op in ("&&", ";", "|"):
                    words = words[: words.index(op)] if op in words else words
                if "..." in words or "--help" in words:
                    continue
                if "--ckpt_path" in words:
                    i = words.index("--ckpt_path")
                    words = words[:i] + words[i + 2:]
                words = [w for w in words if not w.startswith("--ckpt_path=")]
                found.append((f"{page.relative_to(REPO)}: {' '.join(words)[:70]}", words))
    return found


COMMANDS = doc_commands()


def test_the_pages_show_commands():
    pages = {where.split(":")[0] for where, _ in COMMANDS}
    assert len(COMMANDS) >= 30 and {"README.md", "docs/runs.md", "docs/scaling.md"} <= pages


@pytest.mark.parametrize("args", [a for _, a in COMMANDS], ids=[w for w, _ in COMMANDS])
def test_a_command_of_the_docs_parses(args, monkeypatch):
    monkeypatch.chdir(REPO)  # the pages' relative configs/ paths
    config = resolved_config(args)
    assert config["model"] and config["data"]["class_path"]
