"""Figures of the spectral analysis, drawn from the JSON summaries (``report.summarise``)
so that any figure can be redrawn later from the files a run leaves behind."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from flare_lightning.atomic import atomic_write_bytes

FLOOR = 1e-6  # log-scale floor: spectra reach exact zeros when N < M


def head_colours(num_heads: int) -> list:
    """One colour per head (qualitative up to 10 heads, a ramp beyond)."""
    if num_heads <= 10:
        return [colormaps["tab10"](i) for i in range(num_heads)]
    return [colormaps["viridis"](i / (num_heads - 1)) for i in range(num_heads)]


def _array(values: object) -> np.ndarray:
    """JSON lists (None for non-finite) -> float array with NaN."""
    return np.array(values, dtype=float)


def plot_spectra(summary: dict, title: str | None = None) -> Figure:
    """Eigenvalue magnitudes (top row) and singular values (bottom row) of ``W_dec W_enc``
    per block (columns), heads overlaid: mean over samples, band = one std."""
    blocks = summary["blocks"]
    fig = Figure(figsize=(3.2 * len(blocks) + 1.4, 5.6), layout="constrained")
    axes = fig.subplots(2, len(blocks), squeeze=False, sharey="row")
    colours = head_colours(summary["num_heads"])
    for col, block in enumerate(blocks):
        for row, (key, label) in enumerate((("eigenvalue_abs", "|eigenvalue|"), ("singular_values", "singular value"))):
            ax = axes[row, col]
            mean, std = _array(block[key]["mean"]), _array(block[key]["std"])  # [H, M]
            index = np.arange(1, mean.shape[1] + 1)
            for h in range(mean.shape[0]):
                ax.plot(index, np.maximum(mean[h], FLOOR), color=colours[h], lw=1.2, label=f"head {h}")
                lo, hi = np.maximum(mean[h] - std[h], FLOOR), np.maximum(mean[h] + std[h], FLOOR)
                ax.fill_between(index, lo, hi, color=colours[h], alpha=0.15, lw=0)
            ax.set_yscale("log")
            ax.set_ylim(FLOOR, 1.5)
            ax.grid(alpha=0.3)
            if row == 0:
                rank = np.nanmean(_array(block["effective_rank"]["mean"]))
                ax.set_title(f"block {col} (eff. rank {rank:.1f})")
            else:
                ax.set_xlabel("index")
            if col == 0:
                ax.set_ylabel(label)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right center", fontsize="small")
    n = summary["num_samples"]
    fig.suptitle(title or f"Spectrum of W_dec W_enc ({n} sample{'s' * (n != 1)})")
    return fig


def plot_effective_rank_history(summaries: Sequence[dict]) -> Figure:
    """Effective rank per block (panels) and head (lines) against the ``epoch`` of each summary."""
    summaries = sorted(summaries, key=lambda s: s["epoch"])
    epochs = [s["epoch"] for s in summaries]
    num_blocks, num_heads = summaries[0]["num_blocks"], summaries[0]["num_heads"]
    fig = Figure(figsize=(3.2 * num_blocks + 1.4, 3.2), layout="constrained")
    axes = fig.subplots(1, num_blocks, squeeze=False, sharey=True)[0]
    colours = head_colours(num_heads)
    for b, ax in enumerate(axes):
        ranks = _array([s["blocks"][b]["effective_rank"]["mean"] for s in summaries])  # [E, H]
        for h in range(num_heads):
            ax.plot(epochs, ranks[:, h], marker="o", ms=3, color=colours[h], label=f"head {h}")
        ax.set_title(f"block {b}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("effective rank")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize="small")
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG and move it into ``path`` in one rename (readers never see a
    partial file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return atomic_write_bytes(path, buffer.getvalue())
