"""The Figure 4 plot (benchmarks/figure4.py) draws the step_grid records of one card at one commit:
the grid's parts joined, a cell measured again taken from the later run, other cards and commits left out."""

from __future__ import annotations

import pytest

from benchmarks import figure4
from benchmarks.records import read_records, write_record

H100, H200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"


def grid_part(folder, card: str, commit: str, date: str, cells: dict) -> None:
    """A step_grid record with rows {(config, blocks, latents): ms or an error string}."""
    rows = []
    for (config, blocks, latents), value in cells.items():
        row = {"config": config, "n": 2**20, "blocks": blocks, "latents": latents}
        row |= {"error": value} if isinstance(value, str) else {"ms": value, "epoch_s": 0.4 * value, "peak_gb": value / 10}
        rows.append(row)
    write_record("step_grid", rows, paths=["benchmarks/step.py"], out=folder / "step_grid", card=card,
                 commit=(commit * 40, False), versions={}, date=date)


@pytest.fixture
def records(tmp_path):
    grid_part(tmp_path, H100, "a", "2026-12-01T10:00:00Z", {("ours", 8, 128): 999.0})  # an older commit
    grid_part(tmp_path, H100, "b", "2026-12-02T10:00:00Z", {("ours", 1, 128): 10.0, ("ours", 1, 256): 12.0,
                                                             ("ref", 1, 128): 30.0, ("ref", 1, 256): 40.0})
    grid_part(tmp_path, H100, "b", "2026-12-02T11:00:00Z", {("ours", 8, 128): 80.0, ("ours", 8, 256): 90.0,
                                                             ("ref", 8, 256): "out of memory", ("ours", 1, 256): 11.0})
    grid_part(tmp_path, H200, "c", "2026-11-30T10:00:00Z", {("ours", 8, 128): 5.0})  # another card, older
    return read_records(tmp_path)


def test_the_newest_cards_newest_commit_is_drawn_with_its_parts_joined(records):
    grid = figure4.select_grid(records)
    assert (grid.card, grid.commit[:1], grid.configs, grid.blocks) == (H100, "b", ["ours", "ref"], [1, 8])
    assert grid.series("ours", 1, "ms") == [(128, 10.0), (256, 11.0)]  # the later part's 256 replaces 12.0
    assert grid.series("ours", 8, "epoch_s") == [(128, 32.0), (256, 36.0)]  # not the older commit's 999
    assert grid.series("ref", 8, "ms") == [] and grid.failed("ref", 8) == [(256, "out of memory")]


def test_another_card_is_chosen_by_name(records):
    grid = figure4.select_grid(records, card=H200)
    assert (grid.commit[:1], grid.series("ours", 8, "peak_gb")) == ("c", [(128, 0.5)])


def test_no_grid_record_is_an_error_naming_the_command(tmp_path, records):
    with pytest.raises(SystemExit, match="step.py --grid"):
        figure4.select_grid({}, None)
    with pytest.raises(SystemExit, match="card 'NVIDIA A100'"):
        figure4.select_grid(records, card="NVIDIA A100")


def test_the_figure_plots_the_records_values(records, tmp_path):
    grid = figure4.select_grid(records)
    fig = figure4.plot_grid(grid)
    time_axis, memory_axis = fig.axes
    lines = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in time_axis.get_lines()}
    assert lines["ours, 1 block"] == [(128, 4.0), (256, 4.4)]
    assert "ref, 8 blocks" not in lines  # its only cell failed: no curve, a mark on the axis instead
    marks = [list(zip(line.get_xdata(), line.get_ydata())) for line in time_axis.get_lines() if line.get_marker() == "x"]
    assert marks == [[(256, 0)]]
    assert ([line.get_ydata()[0] for line in memory_axis.get_lines() if line.get_label() == "ours, 8 blocks"]
            == [8.0])
    assert f"{H100}, 2026-12-02, commit bbbbbbb" in fig.get_suptitle()
    path = figure4.draw(grid, tmp_path / "figure4.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
