"""``benchmarks/context_parallel.py --dry-run``: the GPU benchmark's whole logic on CPU
(gloo, 1 then 2 processes, tiny model): exactness check, timed steps, and the largest-N
search against a simulated memory limit."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_dry_run_prints_and_writes_the_table(tmp_path, capsys):
    from benchmarks.context_parallel import main

    rows = main(["--dry-run", "--dry-capacity", "600", "--n-time", "128", "--out", str(tmp_path)])
    one, two = rows
    assert (one["gpus"], two["gpus"]) == (1, 2)
    assert two["check"]["output_rel_diff"] < 1e-5 and two["check"]["max_grad_rel_diff"] < 1e-5
    for row, world in ((one, 1), (two, 2)):
        assert row["step"]["n"] == 128 and row["step"]["ms"] > 0
        big = row["largest"]
        assert big["proved"] and big["max_n"] % 32 == 0
        assert 0.9 * 600 * world <= big["max_n"] <= 600 * world  # the simulated card holds 600 points per rank
    assert (one["backend"], two["backend"]) == (None, "gloo") and one["speedup"] == 1.0
    assert two["points_vs_one_gpu"] == two["largest"]["max_n"] / one["largest"]["max_n"]
    (path,) = tmp_path.glob("*.json")  # the run's record
    saved = json.loads(path.read_text())
    assert saved["benchmark"] == "context_parallel" and saved["rows"] == rows and saved["card"].startswith("CPU: ")
    assert "largest N" in capsys.readouterr().out
