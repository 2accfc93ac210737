"""Render benchmarks/RESULTS.md, benchmarks/ACCURACY.md, the README's headline table and the
tables of docs/ pages (``DOC_TABLES``) from the records in benchmarks/records/ (``benchmarks/records.py``),
so no page states a figure by hand.

Each record is marked by itself: **stale** when a file on its measured paths changed since its
commit, and so when its commit is not in this repository's history or it ran on a dirty tree.
A row leaves the pages when a newer record has a row with the same key (``sections.py``; the
newer by commit time, then date); the older record stays in git history (and superseded raw
files in benchmarks/archive/). Prose that interprets a section lives in
``benchmarks/notes/<benchmark>.md`` and is put under its tables.

    python benchmarks/render.py            # write the pages
    python benchmarks/render.py --check    # exit 1, naming them, when the pages differ from the records

Staleness compares with the work tree, so re-render (and commit the pages) after changing a
measured file: a test checks that the committed pages are what the records render to.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `benchmarks.` imports resolve

from benchmarks import accuracy_page  # noqa: E402
from benchmarks.records import RECORDS, RecordError, Staleness, commit_order, read_records, staleness  # noqa: E402
from benchmarks.sections import BY_BENCHMARK, SECTIONS, Column, Section, duration, peak_gb  # noqa: E402
from benchmarks.sections import field as row_field  # noqa: E402

NOTES = ROOT / "benchmarks" / "notes"
HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"


@dataclass(frozen=True)
class DocTable:
    """A table in a page of docs/, between ``<!-- <name>:start -->`` and ``<!-- <name>:end -->``: the
    rows of the newest record of ``benchmark`` that has rows whose fields equal ``match`` (a row of its
    section's summary, where it has one), under a line naming the record, its card, date and commit."""

    page: str  # relative to docs/
    name: str
    benchmark: str
    match: dict[str, Any] = field(default_factory=dict)
    note: Callable[[dict[str, Any]], str] | None = None  # more of the record for the caption

    def markers(self) -> tuple[str, str]:
        return f"<!-- {self.name}:start -->", f"<!-- {self.name}:end -->"


def _spectra_note(record: dict[str, Any]) -> str:
    env = record["environment"]
    return f"test rel. L2 {env['test_rel_l2']:.4f}, {env['summary']['num_samples']} test samples"


DOC_TABLES = (
    DocTable("spectral.md", "spectra", "spectra", note=_spectra_note),  # the numbers of docs/figures/spectra.png
    DocTable("scaling.md", "fit1m", "train_step_small", {"dataset": "drivaerml_1m"}),  # the 1M config's options
)


@dataclass(frozen=True)
class Pages:
    """Where the rendered pages go; the README's text between the headline markers and each doc
    table's between its markers are replaced."""

    results: Path = ROOT / "benchmarks" / "RESULTS.md"
    accuracy: Path = ROOT / "benchmarks" / "ACCURACY.md"
    readme: Path | None = ROOT / "README.md"  # None: no headline table
    docs: Path | None = ROOT / "docs"  # the folder of DOC_TABLES' pages; None: no doc tables


@dataclass
class Entry:
    """A record as the pages use it: its rows still on the pages (``rows``), how many a newer
    record replaced (``replaced``), its staleness and its place in time (``order``)."""

    path: Path
    record: dict[str, Any]
    staleness: Staleness
    order: tuple[tuple[float, int], str, str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    replaced: int = 0


def _when(record: dict[str, Any], repo: Path) -> tuple[float, int]:
    """The record's commit time and place in history, else its date: what "newer" means between records."""
    order = commit_order(record.get("commit"), repo)
    if order is not None:
        return float(order[0]), order[1]
    date = datetime.datetime.fromisoformat(record["date"].replace("Z", "+00:00"))
    return (date if date.tzinfo else date.replace(tzinfo=datetime.timezone.utc)).timestamp(), 0


def _key(names: tuple[str, ...], row: dict[str, Any], record: dict[str, Any]) -> str:
    values = [row_field(row, name) if row_field(row, name) is not None else record.get(name) for name in names]
    return json.dumps(values, sort_keys=True)


def load(records: Path = RECORDS, repo: Path = ROOT) -> list[Entry]:
    """Every record under ``records``, newest first within a benchmark, with its replaced rows taken out."""
    entries = []
    for path, record in read_records(records).items():
        if record["benchmark"] != accuracy_page.BENCHMARK and record["benchmark"] not in BY_BENCHMARK:
            raise RecordError(f"{path}: benchmark {record['benchmark']!r} has no Section in benchmarks/sections.py")
        entries.append(Entry(path, record, staleness(record, repo), (_when(record, repo), record["date"], path.name)))
    entries.sort(key=lambda e: e.order, reverse=True)
    seen: dict[str, set[str]] = {}
    for entry in entries:
        benchmark = entry.record["benchmark"]
        names = accuracy_page.KEY if benchmark == accuracy_page.BENCHMARK else BY_BENCHMARK[benchmark].key
        keys = [_key(names, row, entry.record) for row in entry.record["rows"]]
        taken = seen.setdefault(benchmark, set())
        entry.rows = [row for row, key in zip(entry.record["rows"], keys) if key not in taken]
        entry.replaced = len(keys) - len(entry.rows)
        taken.update(keys)
    return entries


def link_from(page: Path) -> Callable[[Path], str]:
    """A record's path as ``page`` links it (relative to the page's folder)."""
    return lambda path: Path(os.path.relpath(path, page.parent)).as_posix()


def table(columns: tuple[Column, ...], rows: list[dict[str, Any]]) -> list[str]:
    """A markdown table of ``rows``, without the columns that no row has a value for."""
    cells = [[c.cell(row) for c in columns] for row in rows]
    keep = [i for i in range(len(columns)) if any(line[i] != "-" for line in cells)]
    lines = ["| " + " | ".join(columns[i].header for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(line[i] for i in keep) + " |" for line in cells]
    return lines


def _mark(entry: Entry) -> str:
    return "" if entry.staleness.state == "current" else f" ({entry.staleness.state})"


def _commit(record: dict[str, Any]) -> str:
    return (record["commit"] or "no commit")[:7] + ("-dirty" if record["dirty"] else "")


def record_block(entry: Entry, link: Callable[[Path], str], section: Section) -> list[str]:
    """One record on RESULTS.md: where its figures come from, then its table (of the section's
    summary of its rows, where it has one)."""
    record = entry.record
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v)
    lines = [f"### {record['card']}, {record['date'][:10]}, commit {_commit(record)}{_mark(entry)}", "",
             f"`{record['command']}`", "", f"- record: [{entry.path.name}]({link(entry.path)})"]
    if record.get("host"):
        lines.append(f"- host: {record['host']}")
    if versions:
        lines.append(f"- versions: {versions}")
    lines.append("- measures: " + ", ".join(f"`{p}`" for p in record["paths"]))
    if entry.staleness.state != "current":
        lines.append(f"- **{entry.staleness.state}**: {entry.staleness.describe(record['commit'])}")
    if record.get("source"):
        lines.append(f"- source: {record['source']}")
    if entry.replaced:
        lines.append(f"- rows re-measured by newer records, left out here: {entry.replaced}")
    return [*lines, "", *table(section.columns, section.table_rows(entry.rows)), ""]


def read_notes(benchmark: str, notes: Path) -> str:
    path = notes / f"{benchmark}.md"
    return path.read_text() if path.is_file() else ""


def _anchor(title: str) -> str:
    return "".join(ch for ch in title.lower().replace(" ", "-") if ch.isalnum() or ch in "-_")


def results_page(entries: list[Entry], page: Path, notes: Path) -> str:
    """RESULTS.md: per section (in sections.py's order) what it measures, its records' tables, its notes."""
    link = link_from(page)
    shown = {s.benchmark: [e for e in entries if e.record["benchmark"] == s.benchmark and e.rows] for s in SECTIONS}
    sections = [s for s in SECTIONS if shown[s.benchmark]]
    lines = ["# Benchmark results", "",
             "Rendered by `python benchmarks/render.py` from the records in `benchmarks/records/` (one per benchmark "
             "run: card, date, commit, versions, command, the source paths it measures, its rows) and the notes in "
             "`benchmarks/notes/`; edit those, not this page. A table is marked **stale** when a file on its measured "
             "paths changed since its commit (or **dirty**, **unknown commit** when what ran is not in the history); "
             "a row re-measured by a newer record on the same card leaves the page. Accuracy of FLARE and the "
             "baselines: [ACCURACY.md](ACCURACY.md).", ""]
    lines += [f"- [{s.title}](#{_anchor(s.title)})" for s in sections] + [""]
    for section in sections:
        lines += [f"## {section.title}", "", f"What it measures: {section.what}.", ""]
        for entry in shown[section.benchmark]:
            lines += record_block(entry, link, section)
        text = read_notes(section.benchmark, notes)
        if text.strip():
            lines += ["**Notes.**", "", text.strip(), ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Headline:
    """A row of the README's headline table: the newest row still on the pages whose fields
    equal ``match`` in a record of ``benchmark`` (a row of its section's summary, where it has
    one), written by ``text``."""

    what: str
    benchmark: str
    match: dict[str, Any]
    text: Callable[[dict[str, Any]], str]


def _step(row: dict[str, Any]) -> str:
    return f"{row['step_ms']:.2f} ms per step, 500 epochs in {row['500_epochs_min']:.1f} min"


def _error(row: dict[str, Any]) -> str:
    return f"test rel. L2 {row['rel_l2'] * 1e3:.2f}e-3 ({row['precision']})"


def _recipe(row: dict[str, Any]) -> str:
    ranking = ", ".join(f"`{name}` {val:.4f}" for name, val in row["ranking"])
    return (f"`{row['recipe']}`: mean validation rel. L2 {row['val'][0]:.4f}, test {row['test'][0]:.4f} over "
            f"{row['runs']} runs ({row['variants']}); rank {row['rank']} of the recipes tried by validation "
            f"({ranking})")


def _host_memory(row: dict[str, Any]) -> str:
    return f"{row['pss_gb']:.2f} GB summed PSS over {row['processes']} processes (RSS {row['rss_gb']:.2f} GB)"


BF16_FAST = {"precision": "bf16-mixed", "row": "ours-fast"}
def _peak(gb: float | None) -> str:
    return f"peak {gb:.1f} GB" if gb is not None else "peak not measured with the graph's pool"


HEADLINES = (
    Headline("Quickstart (`configs/quickstart.yaml`) end to end, data made on first use", "quickstart",
             {"recipe": "shipped"}, lambda r: f"{duration(r['wall_s'])}, test rel. L2 {r['rel_l2']:.3f}"),
    Headline("Quickstart's recipe on generated Darcy variants it was not tuned on: the best by validation that keeps "
             "the quickstart's time and error (`benchmarks/quickstart_recipes.py`)", "quickstart_recipes",
             {"variant": "all", "recipe": "n400-e27-lr3e-3"}, _recipe),
    Headline("Darcy 85x85 training step, paper size, `fast_step`, bf16", "train_step_small",
             {"dataset": "darcy", **BF16_FAST}, _step),
    Headline("Elasticity training step, 1000 cells, `fast_step`, bf16", "train_step_small",
             {"dataset": "elasticity", **BF16_FAST}, _step),
    Headline("Darcy 85x85 training step, paper size, `fast_step`, fp32 with TF32 dots (`32-true`, "
             "`--float32_matmul_precision high`)", "train_step_small",
             {"dataset": "darcy", "precision": "32-tf32", "row": "ours-fast"}, _step),
    Headline("Darcy 85x85 accuracy, FLARE, paper protocol", "accuracy",
             {"model": "flare", "dataset": "darcy", "budget": "full", "precision": "bf16-mixed, fp32 eval"}, _error),
    Headline("Elasticity accuracy, FLARE, paper protocol", "accuracy",
             {"model": "flare", "dataset": "elasticity", "budget": "full", "precision": "32-true"}, _error),
    Headline("DrivAerML-1M training step through `flare fit`: `configs/drivaerml_1m.yaml` as shipped (M = 256, "
             "2^20 points per step, proxy surfaces; `benchmarks/train_step_small.py`)", "train_step_small",
             {"dataset": "drivaerml_1m", "row": "ours-fast"},
             lambda r: f"{r['step_ms']:.1f} ms per step, {_peak(peak_gb(r))} (validation included)"),
    Headline("2^20-point training step, 8 blocks, M = 256, the fused MLPs compiled, beside the authors' "
             "formulation (`benchmarks/step.py`)", "step", {"config": "ours-fused-compiled", "latents": 256},
             lambda r: f"{r['ms']:.1f} ms per step ({r['speedup_vs_reference_compiled']:.2f}x the authors' "
                       f"formulation compiled), peak {r['peak_gb']:.1f} GB"),
    Headline("A whole DrivAerML surface (8.8M points) through the 1M model, exact chunked evaluation, M = 256 "
             "(`benchmarks/step.py --eval`, model only)", "step_eval", {"config": "ours-fused-compiled-stored"},
             lambda r: f"{r['seconds']:.2f} s, {r['peak_gb']:.1f} GB above model and input"),
    Headline("A whole DrivAerML surface (8.8M points) through `flare test` on the 1M config: read from disk, "
             "evaluated in 2^20-point chunks, field errors and Cd/Cl (`benchmarks/eval_surface.py`)", "eval_surface",
             {"points": 8800000}, lambda r: f"{r['s_per_run']:.2f} s per run, peak {r['peak_gb']:.2f} GB"),
    Headline("Host memory of a DrivAerML fit on 100 runs x 2M points, presampled archives, 3 training epochs "
             "(`benchmarks/drivaerml_memory.py`, 4 loader workers)", "drivaerml_memory",
             {"phase": "train, 3 epochs", "source": "npz"}, _host_memory),
    Headline("Host memory of that fit from full-resolution `.vtp` surfaces, first start (each run's cache built "
             "through VTK, 4 processes)", "drivaerml_memory", {"phase": "first start", "source": "vtp"}, _host_memory),
)


def headline_block(entries: list[Entry], page: Path) -> str:
    """The README's headline table (between the markers)."""
    link = link_from(page)
    lines = [HEADLINE_START,
             "Generated by `python benchmarks/render.py` from `benchmarks/records/`; every figure's card, date, "
             "command and measured paths are in [benchmarks/RESULTS.md](benchmarks/RESULTS.md) and "
             "[benchmarks/ACCURACY.md](benchmarks/ACCURACY.md).", "",
             "| figure | value | card | date | commit | state | record |", "|---|---|---|---|---|---|---|"]
    for head in HEADLINES:
        section = BY_BENCHMARK.get(head.benchmark)
        found = [(e, row) for e in entries if e.record["benchmark"] == head.benchmark
                 for row in (section.table_rows(e.rows) if section else e.rows)
                 if all(row.get(k) == v for k, v in head.match.items())]
        if not found:
            raise RecordError(f"README headline {head.what!r}: no record of {head.benchmark!r} has a row with {head.match}")
        entry, row = found[0]
        record = entry.record
        lines.append(f"| {head.what} | {head.text(row)} | {record['card']} | {record['date'][:10]} | "
                     f"{_commit(record)} | {entry.staleness.state} | [{entry.path.name}]({link(entry.path)}) |")
    return "\n".join([*lines, HEADLINE_END])


def doc_table_block(entries: list[Entry], page: Path, spec: DocTable) -> str:
    """``spec``'s table for ``page`` (between its markers): the newest matching record's rows."""
    section = BY_BENCHMARK[spec.benchmark]
    for entry in (e for e in entries if e.record["benchmark"] == spec.benchmark):  # newest first
        rows = [row for row in section.table_rows(entry.rows) if all(row.get(k) == v for k, v in spec.match.items())]
        if rows:
            break
    else:
        raise RecordError(f"{page}: its table {spec.name!r} needs a record of {spec.benchmark!r} with rows {spec.match}")
    record = entry.record
    note = f"; {spec.note(record)}" if spec.note else ""
    start, end = spec.markers()
    return "\n".join([
        start, f"*Generated by `python benchmarks/render.py` from [{entry.path.name}]({link_from(page)(entry.path)}) "
               f"({record['card']}, {record['date'][:10]}, commit {_commit(record)}, {entry.staleness.state}): "
               f"`{record['command']}`{note}.*", "", *table(section.columns, rows), end])


def with_block(text: str, block: str, where: Path, start_mark: str = HEADLINE_START, end_mark: str = HEADLINE_END) -> str:
    """``text`` with what lies between the two marker lines (markers included) replaced by ``block``."""
    start, end = text.find(start_mark), text.find(end_mark)
    if start < 0 or end < start:
        raise RecordError(f"{where}: needs the lines {start_mark} and {end_mark} (in that order) around "
                          "its rendered table")
    return text[:start] + block + text[end + len(end_mark):]


def render_pages(pages: Pages = Pages(), records: Path = RECORDS, notes: Path = NOTES,
                 repo: Path = ROOT) -> dict[Path, str]:
    """Each page's path and its rendered text (the README whole, with its headline block replaced)."""
    entries = load(records, repo)
    accuracy = [e for e in entries if e.record["benchmark"] == accuracy_page.BENCHMARK]
    texts = {
        pages.results: results_page(entries, pages.results, notes),
        pages.accuracy: accuracy_page.render(accuracy, link_from(pages.accuracy),
                                             read_notes(accuracy_page.BENCHMARK, notes)),
    }
    if pages.readme is not None:
        texts[pages.readme] = with_block(pages.readme.read_text(), headline_block(entries, pages.readme), pages.readme)
    if pages.docs is not None:
        for spec in DOC_TABLES:
            page = pages.docs / spec.page
            texts[page] = with_block(texts.get(page) or page.read_text(), doc_table_block(entries, page, spec), page,
                                     *spec.markers())
    return texts


def differing(texts: dict[Path, str]) -> list[Path]:
    """The pages whose file does not hold its rendered text."""
    return [path for path, text in texts.items() if not path.is_file() or path.read_text() != text]


def write_pages(texts: dict[Path, str]) -> list[Path]:
    """Write the pages that changed, all or none; returns them."""
    from flare_lightning.atomic import atomic_write_files

    changed = differing(texts)
    atomic_write_files({path: (lambda f, t=texts[path]: f.write(t.encode())) for path in changed})
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page differs from its records")
    parser.add_argument("--records", type=Path, default=RECORDS)
    args = parser.parse_args(argv)
    texts = render_pages(records=args.records)
    if args.check:
        stale = differing(texts)
        for path in stale:
            print(f"{path.relative_to(ROOT)}: differs from what its records render to (run python benchmarks/render.py)")
        return 1 if stale else 0
    for path in write_pages(texts):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
