"""Training curves read back from a CSVLogger ``metrics.csv``: blanks skipped, per-layer families in layer order."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from flare_lightning.analysis.curves import curve, layer_curves, read_metrics


def write_metrics(path, rows: list[dict]) -> None:
    keys = sorted({k for r in rows for k in r})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def test_layer_curves_in_layer_order_without_blank_rows(tmp_path):
    rng = np.random.default_rng(0)
    rows, expected = [], {f"block_{i}": [] for i in (0, 2, 10)}
    for epoch in range(4):
        rows.append({"epoch": epoch, "step": 10 * epoch, "train/loss": rng.random()})  # a row without the family
        row = {"epoch": epoch, "step": 10 * epoch + 9, "attn_logits/max_abs": rng.random()}
        for layer in expected:
            value = float(rng.random())
            row[f"attn_logits/max_abs/{layer}"] = value
            expected[layer].append(value)
        rows.append(row)
    write_metrics(tmp_path / "metrics.csv", rows)
    metrics = read_metrics(tmp_path)

    got = layer_curves(metrics, "attn_logits/max_abs")
    assert list(got) == ["block_0", "block_2", "block_10"]  # natural order, and the family's total is not a layer
    for layer, (epochs, values) in got.items():
        np.testing.assert_array_equal(epochs, np.arange(4))
        np.testing.assert_allclose(values, expected[layer])
    assert layer_curves(metrics, "attn_logits/max_abs/").keys() == got.keys()
    assert layer_curves(metrics, "attn_logits/entropy") == {}
    with pytest.raises(KeyError, match="not logged"):
        curve(metrics, "attn_logits/entropy/block_0")


def test_run_labels_stay_short_and_distinct(tmp_path):
    from flare_lightning.runs.discovery import run_labels

    a, b, c = (tmp_path / "bf16/transformer_darcy/seed0_full", tmp_path / "fp32/transformer_darcy/seed0_full",
               tmp_path / "runs/quickstart/version_0")
    assert run_labels([c]) == ["quickstart/version_0"]
    assert run_labels([a, b, c]) == ["bf16/transformer_darcy/seed0_full", "fp32/transformer_darcy/seed0_full",
                                     "runs/quickstart/version_0"]
    with pytest.raises(ValueError, match="listed twice"):
        run_labels([a, tmp_path / "bf16/../bf16/transformer_darcy/seed0_full"])
