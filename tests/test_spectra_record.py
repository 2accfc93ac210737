"""docs/spectral.md's figure and table come from one record (benchmarks/spectra.py): the record's
rows are the summary's numbers, the figure is drawn from the record, and the page's table is
rendered from it."""

from __future__ import annotations

import json

import pytest

from benchmarks import render, spectra
from benchmarks.records import read_record


def summary(blocks: int = 2, heads: int = 3, latents: int = 4) -> dict:
    """A SpectralAnalysis summary with known per-head values: head h of block b has effective
    rank b + h + 1.5 and eigenvalue magnitudes 1, 0.1 (b + 1) + 0.01 h, ..."""
    out = {"num_samples": 2, "num_blocks": blocks, "num_heads": heads, "num_latents": latents, "epoch": 3,
           "global_step": 30, "sample_ids": [0, 1], "points": [9, 9], "blocks": []}
    for b in range(blocks):
        eig = [[1.0, 0.1 * (b + 1) + 0.01 * h] + [1e-3] * (latents - 2) for h in range(heads)]
        out["blocks"].append({
            "eigenvalue_abs": {"mean": eig, "std": [[0.0] * latents] * heads},
            "singular_values": {"mean": eig, "std": [[0.0] * latents] * heads},
            "effective_rank": {"mean": [b + h + 1.5 for h in range(heads)], "std": [0.0] * heads},
            "diversity": {"spectra": {"mean": 0.2 + b, "std": 0.0}, "mixing": {"mean": 0.3 + b, "std": 0.0}},
        })
    return out


def test_block_rows_are_the_ranges_over_heads():
    rows = spectra.block_rows(summary())
    assert rows[1] == {"block": 1, "eff_rank_min": 2.5, "eff_rank_max": 4.5, "lambda2_min": 0.2,
                       "lambda2_max": pytest.approx(0.22), "diversity_spectra": 1.2, "diversity_mixing": 1.3}


def test_a_finished_run_becomes_a_record_the_figure_and_the_page_table(tmp_path):
    run = tmp_path / "run"
    (run / "spectral").mkdir(parents=True)
    (run / "spectral" / "test.json").write_text(json.dumps(summary() | {"seconds": {"total": 1.0}, "stage": "test"}))
    (run / "test_metrics.json").write_text(json.dumps({"test/rel_l2": 0.0321}))
    out = tmp_path / "records" / "spectra"
    record = read_record(spectra.record_run(run, str(out), "python benchmarks/spectra.py --run run"))
    assert record["rows"] == spectra.block_rows(summary())
    assert record["environment"]["test_rel_l2"] == 0.0321 and record["environment"]["summary"]["blocks"] == summary()["blocks"]
    figure = spectra.draw(record, tmp_path / "spectra.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = tmp_path / "spectral.md"
    page.write_text("intro\n<!-- spectra:start -->\nold\n<!-- spectra:end -->\nafter\n")
    entries = render.load(tmp_path / "records")
    spec = next(t for t in render.DOC_TABLES if t.name == "spectra")
    text = render.with_block(page.read_text(), render.doc_table_block(entries, page, spec), page, *spec.markers())
    assert "old" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert "test rel. L2 0.0321, 2 test samples" in text
    assert "| 1 | 2.5-4.5 | 0.20-0.22 | 1.20 | 1.30 |" in text


def test_a_run_without_its_spectra_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match=r"spectral/test.json: missing"):
        spectra.record_run(tmp_path, str(tmp_path), "cmd")

