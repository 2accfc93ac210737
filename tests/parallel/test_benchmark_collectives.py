"""``benchmarks/collectives.py``: gloo against the shared-memory exchange, one run, two processes."""

from __future__ import annotations

import json
import platform

import pytest


@pytest.mark.slow
def test_prints_and_writes_both_columns(tmp_path, capsys):
    from benchmarks.collectives import CASES, main

    rows = main(["--procs", "2", "--reps", "5", "--out", str(tmp_path)])
    assert [r["collective"] for r in rows] == [c[0] for c in CASES]
    assert all(r["gloo_ms"] > 0 for r in rows)
    if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64"):
        assert all(r["exchange_ms"] > 0 for r in rows)
    (path,) = tmp_path.glob("*.json")  # the run's record
    saved = json.loads(path.read_text())
    assert saved["benchmark"] == "collectives" and saved["card"].startswith("CPU: ")
    assert saved["rows"] == rows and saved["environment"]["procs"] == 2
    assert "flare_lightning/parallel/host_exchange.py" in saved["paths"]
    assert "gloo / exchange" in capsys.readouterr().out
