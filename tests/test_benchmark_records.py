"""benchmarks/records.py and benchmarks/render.py: records are written whole and checked on
reading, a record is marked stale by itself when a file on its measured paths changed since its
commit (on a tiny git repository made here), newer records replace rows of the same key, and the
committed pages are what the committed records render to."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks import render
from benchmarks.records import (RecordError, Staleness, collect_records, make_record, read_records, staleness,
                                write_record)
from benchmarks.sections import Column, size, tries
from tests.helpers import REPO


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with a measured file (kernels/a.py) and another (docs.md)."""
    root = tmp_path / "repo"
    (root / "kernels").mkdir(parents=True)
    git(root, "init", "-q")
    (root / "kernels" / "a.py").write_text("x = 1\n")
    (root / "docs.md").write_text("notes\n")
    return root


def record(commit: str | None, rows: list[dict], benchmark: str = "step", card: str = "NVIDIA H100", date: str = "2026-12-02",
           dirty: bool = False) -> dict:
    return make_record(benchmark, rows, paths=["kernels/"], card=card, command="python benchmarks/step.py", date=date,
                       commit=(commit, dirty), versions={"torch": "2.13.0"})


def test_a_record_is_stale_once_a_file_on_its_paths_changes(repo):
    first = commit_all(repo, "first")
    rec = record(first, [{"config": "ours", "n": 8, "ms": 1.0}])
    assert staleness(rec, repo) == Staleness("current")
    (repo / "docs.md").write_text("other notes\n")
    commit_all(repo, "docs only")
    assert staleness(rec, repo) == Staleness("current")  # off the measured paths
    (repo / "kernels" / "a.py").write_text("x = 2\n")  # not committed yet: the work tree counts
    assert staleness(rec, repo) == Staleness("stale", ("kernels/a.py",))
    commit_all(repo, "kernel change")
    assert staleness(rec, repo) == Staleness("stale", ("kernels/a.py",))
    (repo / "kernels" / "b.py").write_text("y = 1\n")  # a new file on the path, not yet added
    assert staleness(rec, repo).changed == ("kernels/a.py", "kernels/b.py")
    assert "2 files on its measured paths changed since" in staleness(rec, repo).describe(first)
    assert staleness(record("0" * 40, rec["rows"]), repo).state == "unknown commit"
    assert staleness(record(None, rec["rows"]), repo).state == "unknown commit"
    assert staleness(record(first, rec["rows"], dirty=True), repo).state == "dirty"


def test_newer_records_replace_rows_of_the_same_key_on_the_same_card(repo, tmp_path):
    first = commit_all(repo, "first")
    (repo / "docs.md").write_text("later\n")
    second = commit_all(repo, "second")
    records = tmp_path / "records" / "step"
    records.mkdir(parents=True)
    old = record(first, [{"config": "a", "n": 8, "ms": 2.0}, {"config": "b", "n": 8, "ms": 3.0}])
    new = record(second, [{"config": "a", "n": 8, "ms": 1.0}])
    other_card = record(first, [{"config": "a", "n": 8, "ms": 9.0}], card="NVIDIA H200")
    for name, rec in (("old.json", old), ("new.json", new), ("h200.json", other_card)):
        (records / name).write_text(json.dumps(rec))
    entries = {e.path.name: e for e in render.load(tmp_path / "records", repo)}
    assert [r["ms"] for r in entries["new.json"].rows] == [1.0]
    assert [r["config"] for r in entries["old.json"].rows] == ["b"] and entries["old.json"].replaced == 1
    assert [r["ms"] for r in entries["h200.json"].rows] == [9.0]  # another card's figure stays
    page = render.results_page(list(entries.values()), tmp_path / "RESULTS.md", tmp_path / "notes")
    assert "rows re-measured by newer records, left out here: 1" in page
    assert "| a | (none) |" not in page and "| b |" in page


def test_write_record_writes_a_valid_record_and_keeps_earlier_ones(tmp_path):
    rows = [{"config": "ours", "n": 2**20, "ms": 112.5}]
    first = write_record("step", rows, paths=["flare_lightning/models/"], out=tmp_path, card="NVIDIA H100",
                         commit=("a" * 40, False), versions={"torch": "2.13.0"}, date="2026-12-02T10:00:00Z")
    second = write_record("step", rows, paths=["flare_lightning/models/"], out=tmp_path, card="NVIDIA H100",
                          commit=("a" * 40, False), versions={"torch": "2.13.0"}, date="2026-12-02T10:00:00Z")
    assert first != second and first.name == "20261202T100000Z_aaaaaaa_nvidia-h100.json"
    saved = json.loads(first.read_text())
    assert saved["rows"] == rows and saved["paths"][0] == "flare_lightning/models/"
    assert saved["command"].startswith("python ") and saved["dirty"] is False
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(RecordError, match="field 'paths' should list repository-relative paths"):
        make_record("step", rows, paths=["/abs/path"], card="x", command="c", commit=(None, False), versions={})


def test_collect_brings_records_home_by_benchmark_and_never_overwrites(tmp_path, capsys):
    """Records fetched from a device run, at any depth, land in <dest>/<benchmark>/; a second collect adds
    nothing; a different record of the same name is kept beside; other JSON files are reported, not copied."""
    fetched, dest = tmp_path / "dev", tmp_path / "records"
    made = write_record("step", [{"config": "ours", "ms": 1.0}], paths=["flare_lightning/"], out=fetched / "rec_step",
                        card="NVIDIA H100", commit=("a" * 40, False), versions={}, date="2026-12-07T09:00:00Z")
    (fetched / "rec_tss").mkdir()
    (fetched / "rec_tss" / "notes.json").write_text('{"a": 1}')
    assert collect_records(fetched, dest) == [dest / "step" / made.name]
    assert json.loads((dest / "step" / made.name).read_text())["rows"] == [{"config": "ours", "ms": 1.0}]
    assert "not a record" in capsys.readouterr().err and not (dest / "tss").exists()
    assert collect_records(fetched, dest) == []
    annotated = json.loads((dest / "step" / made.name).read_text()) | {"source": "a note added at home"}
    (dest / "step" / made.name).write_text(json.dumps(annotated))
    assert collect_records(fetched, dest) == []  # the same run, its note kept
    other = json.loads(made.read_text())
    other["rows"] = [{"config": "ours", "ms": 2.0}]
    made.write_text(json.dumps(other))
    assert collect_records(fetched, dest) == [dest / "step" / made.name.replace(".json", "_2.json")]
    assert json.loads((dest / "step" / made.name).read_text())["rows"][0]["ms"] == 1.0  # the first kept


def test_read_records_names_the_file_and_field_at_fault(tmp_path):
    folder = tmp_path / "records" / "step"
    folder.mkdir(parents=True)
    good = record("a" * 40, [{"config": "a"}])
    (folder / "x.json").write_text(json.dumps({k: v for k, v in good.items() if k != "card"}))
    with pytest.raises(RecordError, match=r"x.json: field 'card' is missing"):
        read_records(tmp_path / "records")
    (folder / "x.json").write_text(json.dumps({**good, "benchmark": "mixer"}))
    with pytest.raises(RecordError, match=r"x.json: benchmark 'mixer' sits in the folder of 'step'"):
        read_records(tmp_path / "records")
    (folder / "x.json").write_text(json.dumps({**good, "benchmark": "nothing"}))
    (folder.parent / "nothing").mkdir()
    (folder / "x.json").rename(folder.parent / "nothing" / "x.json")
    with pytest.raises(RecordError, match="benchmark 'nothing' has no Section"):
        render.load(tmp_path / "records", REPO)


def test_pages_render_tables_notes_and_the_readme_headline(repo, tmp_path, monkeypatch):
    sha = commit_all(repo, "first")
    records, notes = tmp_path / "records", tmp_path / "notes"
    (records / "step").mkdir(parents=True)
    notes.mkdir()
    rows = [{"config": "ours", "options": "compile", "n": 2**20, "ms": 112.5, "peak_gb": 37.3}]
    (records / "step" / "r.json").write_text(json.dumps(record(sha, rows)))
    (notes / "step.md").write_text("Compiling pays.\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{render.HEADLINE_START}\nold\n{render.HEADLINE_END}\nrest\n")
    headline = render.Headline("step", "step", {"config": "ours"}, lambda r: f"{r['ms']:.1f} ms")
    monkeypatch.setattr(render, "HEADLINES", (headline,))
    pages = render.Pages(results=tmp_path / "RESULTS.md", accuracy=tmp_path / "ACCURACY.md", readme=readme, docs=None)
    texts = render.render_pages(pages, records, notes, repo)
    results = texts[pages.results]
    assert "| ours | compile | 1M | 64 | 112.5 |" in results and "Compiling pays." in results
    assert f"commit {sha[:7]}" in results and "`python benchmarks/step.py`" in results
    assert "(stale)" not in results and "[r.json](records/step/r.json)" in results
    assert "| step | 112.5 ms | NVIDIA H100 | 2026-12-02 | " in texts[readme] and "old" not in texts[readme]
    assert texts[readme].startswith("intro\n") and texts[readme].endswith("rest\n")
    assert "**No runs recorded yet**" in texts[pages.accuracy]
    assert render.write_pages(texts) == list(texts) and render.differing(texts) == []
    monkeypatch.setattr(render, "HEADLINES", (render.Headline("x", "step", {"config": "gone"}, str),))
    with pytest.raises(RecordError, match="README headline 'x': no record of 'step' has a row with"):
        render.render_pages(pages, records, notes, repo)
    monkeypatch.setattr(render, "HEADLINES", (headline,))
    readme.write_text("no markers\n")
    with pytest.raises(RecordError, match="README.md: needs the lines <!-- headline:start -->"):
        render.render_pages(pages, records, notes, repo)


def test_a_section_with_a_summary_shows_its_summary_and_headlines_read_it(repo, tmp_path, monkeypatch):
    """quickstart_recipes' runs render as mean ± sd per recipe and variant, recipes in the order
    of their mean validation error; a headline finds the summary's rows."""
    sha = commit_all(repo, "first")
    records = tmp_path / "records"
    (records / "quickstart_recipes").mkdir(parents=True)
    rows = [{"recipe": r, "variant": "16x16", "seed": s, "val_rel_l2": val + 0.002 * s, "test_rel_l2": 0.05, "wall_s": 60}
            for r, val in (("hot", 0.06), ("calm", 0.04)) for s in (0, 1)]
    rec = record(sha, rows, benchmark="quickstart_recipes", card="CPU: test, 2 cores")
    (records / "quickstart_recipes" / "r.json").write_text(json.dumps(rec))
    readme = tmp_path / "README.md"
    readme.write_text(f"{render.HEADLINE_START}\n{render.HEADLINE_END}\n")
    headline = render.Headline("chosen", "quickstart_recipes", {"variant": "all", "rank": 1}, lambda r: r["recipe"])
    monkeypatch.setattr(render, "HEADLINES", (headline,))
    pages = render.Pages(results=tmp_path / "RESULTS.md", accuracy=tmp_path / "ACCURACY.md", readme=readme, docs=None)
    texts = render.render_pages(pages, records, tmp_path / "notes", repo)
    results = texts[pages.results]
    assert "| calm | 16x16 | 2 | 0.0410 ± 0.0014 | 0.0500 ± 0.0000 | 1m00 |" in results
    assert results.index("| calm | all | 2 |") < results.index("| hot | 16x16 |")
    assert "| hot | all | 2 | 0.0610 ± 0.0014 | 0.0500 ± 0.0000 | 1m00 | 2 |" in results
    assert "| chosen | calm | CPU: test, 2 cores |" in texts[readme]


def test_columns_write_values_as_the_tables_do():
    assert [size(n) for n in (2**14, 2**20, 3 * 2**20, 1000)] == ["16k", "1M", "3M", "1,000"]
    assert tries([[2**20, 4.31], [2**21, None]]) == "1M: 4.3, 2M: OOM"
    assert Column("step.ms", "ms", ".1f").cell({"step": {"ms": 3.14159}}) == "3.1"
    assert Column("x", "x", ".1f").cell({}) == "-" and Column("s", "s").cell({"s": "a|b"}) == "a\\|b"


def test_committed_pages_are_what_the_committed_records_render_to():
    """A record added or changed without re-rendering, or a measured file changed without
    re-rendering (which may mark figures stale), fails here: run python benchmarks/render.py."""
    if not (REPO / ".git").exists() or git(REPO, "rev-parse", "--is-shallow-repository") == "true":
        pytest.skip("needs the repository's full git history (staleness compares with each record's commit)")
    stale = render.differing(render.render_pages())
    assert not stale, f"{[str(p.relative_to(REPO)) for p in stale]} differ from their records: run python benchmarks/render.py"


def test_a_docs_table_shows_the_newest_matching_record(repo, tmp_path, monkeypatch):
    """A DocTable renders, between its markers in its docs page, the rows matching its filter of
    the newest record that has any (an older record, and other rows, stay out); a page without
    the markers, or no matching record, fails naming the page and the table."""
    first = commit_all(repo, "first")
    (repo / "kernels" / "a.py").write_text("x = 2\n")
    second = commit_all(repo, "second")
    records = tmp_path / "records"
    (records / "step").mkdir(parents=True)
    old = [{"config": "ours", "options": "compile", "n": 2**20, "ms": 200.0}]
    new = [{"config": "ours", "options": "compile", "n": 2**20, "ms": 150.0},
           {"config": "reference", "options": "", "n": 2**20, "ms": 400.0}]
    (records / "step" / "old.json").write_text(json.dumps(record(first, old, card="Old card")))
    (records / "step" / "new.json").write_text(json.dumps(record(second, new, card="New card", date="2026-12-01")))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "page.md").write_text("intro\n<!-- t:start -->\nold text\n<!-- t:end -->\nend\n")
    monkeypatch.setattr(render, "DOC_TABLES", (render.DocTable("page.md", "t", "step", {"config": "ours"}),))
    pages = render.Pages(results=tmp_path / "RESULTS.md", accuracy=tmp_path / "ACCURACY.md", readme=None, docs=docs)
    text = render.render_pages(pages, records, tmp_path / "notes", repo)[docs / "page.md"]
    assert text.startswith("intro\n<!-- t:start -->\n*Generated by") and text.endswith("<!-- t:end -->\nend\n")
    assert "New card" in text and "Old card" not in text and "old text" not in text
    assert "150.0" in text and "400.0" not in text  # the filter: the reference row stays out
    monkeypatch.setattr(render, "DOC_TABLES", (render.DocTable("page.md", "t", "step", {"config": "gone"}),))
    with pytest.raises(RecordError, match=r"page.md: its table 't' needs a record of 'step' with rows"):
        render.render_pages(pages, records, tmp_path / "notes", repo)
    monkeypatch.setattr(render, "DOC_TABLES", (render.DocTable("page.md", "u", "step"),))
    with pytest.raises(RecordError, match=r"page.md: needs the lines <!-- u:start --> and <!-- u:end -->"):
        render.render_pages(pages, records, tmp_path / "notes", repo)
