"""benchmarks/ACCURACY.md from the accuracy records (one per run, written by ``python
benchmarks/accuracy.py collect``): per epoch budget a models x datasets table of test errors with
the paper's real-data numbers beside them, then every run with its card, date, commit and state."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve
from benchmarks.accuracy_collect import hours
from benchmarks.accuracy_runs import DATASETS, MODELS

BENCHMARK = "accuracy"
KEY = ("model", "dataset", "seed", "budget", "precision")  # a later record of the same run replaces it, on any card
REFERENCE_PRECISION = "32-true"  # what the precision comparison holds every other precision against

INTRO = """\
Test relative L2 error x1e-3 (lower is better) of the best-validation checkpoint, mean over seeds,
with the wall time of a run (fit + test); a cell has a line per precision, each labelled ("fp32
eval": trained under bf16 autocast, validated and tested in float32). Every model sees the same
samples of a column; each trains with its own paper protocol (configs/<dataset>.yaml for FLARE,
configs/baselines/ for the others; Darcy with the reference's gradient objective, test metric rel.
L2 of u). **Columns marked "paper" are the FLARE paper's numbers on the real files (arXiv
2508.12594, read off its figure; blank where it gives none): other data,
not comparable cell by cell.** The authors' trainer runs in fp32 (`mixed_precision: bool = False`
in FLARE.py's pdebench)."""


def _by_precision(runs: list[tuple[dict[str, Any], str]]) -> dict[str, list[tuple[dict[str, Any], str]]]:
    """``runs`` grouped by precision, 32-true first, then by name: seeds average within a group only."""
    groups: dict[str, list] = {}
    for run in sorted(runs, key=lambda r: (r[0]["precision"] != REFERENCE_PRECISION, r[0]["precision"])):
        groups.setdefault(run[0]["precision"], []).append(run)
    return groups


def _summary(runs: list[tuple[dict[str, Any], str]]) -> str:
    """Mean (and spread) over the seeds of one precision group; ``runs``: (row, its record's state)."""
    vals = [row["rel_l2"] * 1e3 for row, _ in runs]
    walls = [row["wall_s"] for row, _ in runs if row.get("wall_s") is not None]
    wall = hours(statistics.mean(walls)) if walls else "time unknown"
    marks = "".join(f"; {state}" for state in dict.fromkeys(state for _, state in runs) if state != "current")
    precision = runs[0][0]["precision"]
    if len(vals) == 1:
        return f"**{vals[0]:.2f}** ({precision}; {wall}{marks})"
    return (f"**{statistics.mean(vals):.2f}** ({min(vals):.2f}-{max(vals):.2f}, {len(vals)} seeds; {precision}; "
            f"{wall} each{marks})")


def _cell(runs: list[tuple[dict[str, Any], str]]) -> str:
    """One model on one dataset: a line per precision (mean and spread over its seeds), labelled."""
    if not runs:
        return "not run"
    return "<br>".join(_summary(group) for group in _by_precision(runs).values())


def _precision_table(runs: list[tuple[dict[str, Any], Any]]) -> list[str]:
    """The model/dataset/budget cells run at more than one precision: a row per precision with the mean,
    spread and seeds, and the mean as a multiple of the 32-true runs' (what bf16 costs, and what a
    mixed mode recovers)."""
    cells: dict[tuple, list] = {}
    for row, entry in runs:
        cells.setdefault((row["budget"], row["dataset"], row["model"]), []).append((row, entry.staleness.state))
    lines = []
    order = list(MODELS)
    for budget, dataset, model in sorted(cells, key=lambda k: (k[0] != "full", k[1], order.index(k[2]))):
        groups = _by_precision(cells[budget, dataset, model])
        if len(groups) < 2:
            continue
        values = {p: [r["rel_l2"] * 1e3 for r, _ in g] for p, g in groups.items()}
        means = {p: statistics.mean(v) for p, v in values.items()}
        for precision, group in groups.items():
            vals = values[precision]
            spread = f"{min(vals):.2f}-{max(vals):.2f}" if len(vals) > 1 else "-"
            ratio = f"{means[precision] / means[REFERENCE_PRECISION]:.2f}x" if REFERENCE_PRECISION in means else "-"
            states = ", ".join(dict.fromkeys(state for _, state in group))
            lines.append(f"| {MODELS[model]} | {dataset} | {budget} | {precision} | {means[precision]:.2f} | {spread} | "
                         f"{len(vals)} | {ratio} | {states} |")
    if not lines:
        return []
    return ["## One model and data set at several precisions", "",
            "The runs above, by precision: mean test rel. L2 x1e-3 over seeds, its spread, and the mean as a multiple "
            f"of the {REFERENCE_PRECISION} runs' (a ratio inside the spread between seeds is no difference).", "",
            "| model | dataset | budget | precision | mean | spread | seeds | vs 32-true | state |",
            "|---|---|---|---|---|---|---|---|---|", *lines, ""]


def _budget_title(budget: str) -> str:
    if budget == "full":
        return "Full budget: each config's own epochs"
    return (f"Reduced budget: {budget[2:]} epochs for every model (the OneCycle schedule is compressed to the "
            "budget, so these are not the paper's protocol)")


def _attempts(row: dict[str, Any]) -> str:
    text = hours(row.get("wall_s"))
    if row.get("attempts", 1) > 1:
        text += f", {row['attempts']} attempts"
    if row.get("untimed_attempts"):
        text += f" ({row['untimed_attempts']} without a recorded end: a lower bound)"
    return text


def render(entries: list[Any], link: Callable[[Path], str], notes: str) -> str:
    """The page. ``entries``: the accuracy records as the renderer holds them (``.record``,
    ``.rows``: the rows not replaced by a later record, ``.staleness``, ``.path``);
    ``link``: a record's path as this page links it; ``notes``: hand-written, put at the end."""
    runs = [(row, entry) for entry in entries for row in entry.rows]
    lines = ["# Accuracy: FLARE and the baselines on the same data", "", INTRO, "",
             "Rendered by `python benchmarks/render.py` from one record per run in `benchmarks/records/accuracy/` "
             "(written by `python benchmarks/accuracy.py collect`); do not edit this page. A run is **stale** when a "
             "file on its measured paths changed since its first attempt's commit.", ""]
    if not runs:
        lines += ["**No runs recorded yet**: launch them with `benchmarks/accuracy.py launch` (its docstring).", ""]
    budgets = sorted({row["budget"] for row, _ in runs}, key=lambda b: (b != "full", int(b[2:]) if b != "full" else 0))
    for budget in budgets:
        header, rule = ["model"], ["---"]
        for ds in DATASETS.values():
            header.append(ds.label)
            rule.append("---")
            if ds.paper_label:
                header.append(f"*{ds.paper_label}*")
                rule.append("---")
        lines += [f"## {_budget_title(budget)}", "", "| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
        for model, label in MODELS.items():
            cells = [label]
            for name, ds in DATASETS.items():
                cells.append(_cell([(row, entry.staleness.state) for row, entry in runs
                                    if (row["budget"], row["model"], row["dataset"]) == (budget, model, name)]))
                if ds.paper_label:
                    cells.append(f"*{ds.paper[model]}*" if model in ds.paper else "")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += _precision_table(runs)
    if runs:
        lines += ["## Runs", "",
                  "\"full budget at this pace\" scales a run's wall time to its config's full epoch budget.", "",
                  "| model | dataset | budget | seed | precision | test rel. L2 | wall time | full budget at this pace "
                  "| card | date | commit | state | record |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        order = list(MODELS)
        stale = []
        for row, entry in sorted(runs, key=lambda r: (r[0]["budget"], r[0]["dataset"], order.index(r[0]["model"]),
                                                      r[0]["precision"], r[0]["seed"])):
            record, state = entry.record, entry.staleness.state
            commits = ", then ".join(c[:7] for c in row.get("commits") or [record["commit"] or "unknown"])
            full = row.get("full_budget_s")
            lines.append(f"| {MODELS[row['model']]} | {row['dataset']} | {row['budget']} | {row['seed']} | "
                         f"{row['precision']} | {row['rel_l2']:.4e} | {_attempts(row)} | "
                         f"{hours(full) if full is not None else '-'} | {record['card']} | {record['date'][:10]} | "
                         f"{commits} | {state} | [{entry.path.name}]({link(entry.path)}) |")
            if state != "current":
                stale.append(f"- {entry.path.name}: {entry.staleness.describe(record['commit'])}")
        lines.append("")
        if stale:
            lines += ["Why runs are marked:", "", *stale, ""]
    if notes.strip():
        lines += ["## Notes on the runs", "", notes.strip(), ""]
    return "\n".join(lines)
