"""The paper's Figure 4 as a figure of record: epoch time and peak memory over blocks and latents at 2^20 points.

Draws ``docs/figures/figure4_grid.png`` from the ``step_grid`` records (``benchmarks/step.py --grid``),
ours beside the authors' formulation, so the figure is the records, never numbers restated by hand.
The grid runs in parts (``scripts/gpu_session.sh``'s ``grid12`` and ``grid48`` stages, one device
call each): the figure joins the parts measured on one card at one commit, the newest such commit
(a cell measured twice there: the later run), and leaves out cells of other cards and commits.

    python benchmarks/figure4.py                         # from benchmarks/records/, newest card and commit
    python benchmarks/figure4.py --card "NVIDIA H100 80GB HBM3" --out /tmp/figure4.png
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `benchmarks.` imports resolve

from benchmarks.records import RECORDS, read_records  # noqa: E402

FIGURE = ROOT / "docs" / "figures" / "figure4_grid.png"
Cell = tuple[str, int, int]  # (config, blocks, latents)


@dataclass
class Grid:
    """The cells of one card at one commit: each (config, blocks, latents) -> its row."""

    card: str
    commit: str | None
    dates: list[str]
    cells: dict[Cell, dict[str, Any]] = field(default_factory=dict)

    def series(self, config: str, blocks: int, key: str) -> list[tuple[int, float]]:
        """(latents, value) of the measured cells of one line, by latents; cells that failed
        (out of memory) have no ``key`` and are left out."""
        return sorted((m, row[key]) for (c, b, m), row in self.cells.items()
                      if (c, b) == (config, blocks) and key in row)

    def failed(self, config: str, blocks: int) -> list[tuple[int, str]]:
        """(latents, error) of the cells of one line that did not run (e.g. out of memory)."""
        return sorted((m, row["error"]) for (c, b, m), row in self.cells.items()
                      if (c, b) == (config, blocks) and "error" in row)

    @property
    def configs(self) -> list[str]:
        return sorted({c for c, _, _ in self.cells})

    @property
    def blocks(self) -> list[int]:
        return sorted({b for _, b, _ in self.cells})


def select_grid(records: dict[Path, dict[str, Any]], card: str | None = None) -> Grid:
    """The grid to draw: ``card`` (default: the card of the newest ``step_grid`` record), its newest
    commit's records joined, later records overriding earlier ones cell by cell."""
    found = sorted((r for r in records.values() if r["benchmark"] == "step_grid"), key=lambda r: r["date"])
    if card is not None:
        found = [r for r in found if r["card"] == card]
    if not found:
        raise SystemExit(f"no step_grid record{f' of card {card!r}' if card else ''}: run "
                         "`python benchmarks/step.py --grid` on a GPU (scripts/gpu_session.sh: grid12, grid48) first")
    newest = found[-1]
    parts = [r for r in found if r["card"] == newest["card"] and r["commit"] == newest["commit"]]
    grid = Grid(newest["card"], newest["commit"], [r["date"] for r in parts])
    for record in parts:  # by date: a cell measured again replaces the earlier one
        for row in record["rows"]:
            grid.cells[(row["config"], int(row["blocks"]), int(row["latents"]))] = row
    return grid


def plot_grid(grid: Grid):
    """Two panels over latents (log2 axis): seconds per 400-run epoch (steps only) and peak GB, a
    colour per block count, a line style per config; failed cells marked on the axis."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    colours = colormaps["viridis"]
    styles = ["-", "--", ":", "-."]
    for j, config in enumerate(grid.configs):
        for i, blocks in enumerate(grid.blocks):
            colour = colours(i / max(1, len(grid.blocks) - 1) * 0.85)
            for ax, key in zip(axes, ("epoch_s", "peak_gb")):
                points = grid.series(config, blocks, key)
                if points:
                    ax.plot(*zip(*points), styles[j % len(styles)], marker="o", color=colour,
                            label=f"{config}, {blocks} block{'s' if blocks > 1 else ''}")
                for latents, _ in grid.failed(config, blocks):
                    ax.plot([latents], [0], "x", color=colour, markersize=9, clip_on=False)
    latents = sorted({m for _, _, m in grid.cells})
    for ax, label in zip(axes, ("seconds per 400-run epoch (training steps only)", "peak GPU memory [GB]")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(latents, [str(m) for m in latents])
        ax.set_xlabel("latents M")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Figure 4 at 2^20 points: {grid.card}, {grid.dates[-1][:10]}, commit {(grid.commit or 'unknown')[:7]}"
                 " (x: out of memory)", fontsize=10)
    return fig


def draw(grid: Grid, path: Path = FIGURE) -> Path:
    """Render ``grid`` into ``path`` (written whole: temporary file, then rename)."""
    from flare_lightning.analysis.plots import save_figure

    return save_figure(plot_grid(grid), path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=Path, default=RECORDS, help="the records folder (default: benchmarks/records)")
    p.add_argument("--card", help="the card whose grid to draw (default: the newest step_grid record's)")
    p.add_argument("--out", type=Path, default=FIGURE, help=f"the PNG to write (default: {FIGURE.relative_to(ROOT)})")
    args = p.parse_args(argv)
    grid = select_grid(read_records(args.records), args.card)
    print(f"figure: {draw(grid, args.out)} ({len(grid.cells)} cells, {grid.card}, commit {grid.commit})")


if __name__ == "__main__":
    main()
