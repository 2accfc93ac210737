"""provenance.commit: an explicit ``$FLARE_COMMIT`` names the code (a copied tree whose ``.git``
is stale, as on the device machines, would otherwise report the stale HEAD); else git's HEAD."""

from __future__ import annotations

import subprocess
from pathlib import Path

from flare_lightning.runs import provenance


def test_flare_commit_wins_over_git(monkeypatch):
    monkeypatch.setenv("FLARE_COMMIT", "abc1234")
    assert provenance.commit() == "abc1234"


def test_git_head_without_flare_commit(monkeypatch):
    monkeypatch.delenv("FLARE_COMMIT", raising=False)
    repo = Path(provenance.__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    if head.returncode != 0:  # an installed copy outside a repository
        assert provenance.commit() == "unknown"
        return
    assert provenance.commit().removesuffix("-dirty") == head.stdout.strip()
