"""Every `flare fit/test/validate/predict` command shown in README.md and docs/ parses: its configs
exist and compose, and each option is one the CLI has, with a value of the right type (parsed as
``--print_config`` does, nothing built; data paths such as /data/... are not read)."""

from __future__ import annotations

import pytest

from tests.helpers import REPO, flare_commands, resolved_config

SUBCOMMANDS = ("fit", "test", "validate", "predict")


def doc_commands() -> list[tuple[str, list[str]]]:
    """(where, options) of every fit/test/validate/predict command of the pages: the subcommand and
    ``--ckpt_path`` (a run's file) left out; lines with a placeholder (``...``) or ``--help`` skipped."""
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for words in flare_commands(page.read_text()):
            if not words or words[0] not in SUBCOMMANDS or "..." in words or "--help" in words:
                continue
            words = words[1:]
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
