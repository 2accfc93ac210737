"""Training curves from a run's ``metrics.csv`` (CSVLogger: one column per metric, blank
where a row does not log it)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np


def read_metrics(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a ``metrics.csv`` (or of ``<run>/metrics.csv`` given a run folder) as float
    arrays, NaN where blank."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path} (expected a CSVLogger run folder)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds a header but no rows")
    return {key: np.array([float(r[key]) if r[key] not in ("", None) else np.nan for r in rows]) for key in rows[0]}


def curve(metrics: dict[str, np.ndarray], key: str, x: str = "epoch") -> tuple[np.ndarray, np.ndarray]:
    """``(x, values)`` over the rows that log ``key``; ``x`` is ``epoch`` or ``step``."""
    if key not in metrics:
        raise KeyError(f"metric {key!r} not logged; available: {sorted(metrics)}")
    keep = ~np.isnan(metrics[key])
    return metrics[x][keep], metrics[key][keep]


def _natural(key: str) -> list:
    """Sort key that orders ``block_2`` before ``block_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def layer_curves(metrics: dict[str, np.ndarray], prefix: str, x: str = "epoch") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-layer curves of a metric family logged as ``<prefix>/<layer>`` (e.g. ``attn_logits/max_abs``
    of the AttentionLogits callback): ``{layer: (x, values)}`` in layer order; ``{}`` if none is logged."""
    head = prefix.rstrip("/") + "/"
    layers = [k[len(head):] for k in metrics if k.startswith(head) and "/" not in k[len(head):]]
    return {layer: curve(metrics, head + layer, x) for layer in sorted(layers, key=_natural)}
