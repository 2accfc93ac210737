"""Benchmark records: one JSON file per benchmark run, holding its figures and where they come from.

Every figure on the rendered pages (``python benchmarks/render.py``: benchmarks/RESULTS.md,
benchmarks/ACCURACY.md and the README's headline table) comes from a record, and a record
says what a reader needs to trust or re-make it: the card, date, commit (and whether the
tree had uncommitted changes), package versions, the exact command, the source paths whose
change can move its numbers, and its rows. The renderer marks a record stale by itself when
a file on those paths changed since its commit.

Records written on another machine (``$OUT`` of a lent GPU) come home with
``python benchmarks/records.py collect <folder>``: each valid record under the folder is copied into
``benchmarks/records/<benchmark>/`` (never over a different record of that name), then re-render.

Adopting it in a benchmark script takes a few lines::

    from benchmarks.records import write_record

    rows = [{"config": "ours", "n": 2**20, "step_ms": 112.5, "peak_gb": 37.3}]
    write_record("step_1m", rows, paths=["flare_lightning/models/", "flare_lightning/kernels/"],
                 out=args.out)  # a folder ($OUT on a device machine); None: benchmarks/records/step_1m/

(``add_out_argument(parser)`` gives a script the usual ``--out``; run it with ``PYTHONPATH=$PWD`` so
``benchmarks.`` imports), then give the benchmark a ``Section`` in ``benchmarks/sections.py`` (title, what it measures,
the row fields that name a figure, its columns), copy the record into
``benchmarks/records/<benchmark>/`` if it was written elsewhere, and re-render. The script's
own file is added to ``paths``. On a machine without the repository's ``.git`` set
``FLARE_COMMIT`` to the commit copied there (``<hash>-dirty`` when the copy has uncommitted
changes) and, if useful, ``FLARE_HOST`` to a line about the machine (GPU index, cores, what
else ran).

Fields (``format`` 1): ``benchmark``, ``card``, ``host`` (free text or null), ``date`` (UTC,
ISO 8601), ``commit`` (hash or null), ``dirty`` (bool), ``versions`` (name -> version),
``command``, ``paths`` (repository-relative files or folders, a folder ending in ``/``),
``rows`` (list of objects), and optionally ``environment`` (the script's settings) and
``source`` (how a record that no script wrote came to be, e.g. transcribed from a page).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `benchmarks.` imports resolve
RECORDS = ROOT / "benchmarks" / "records"
FORMAT = 1
REQUIRED = {"format": int, "benchmark": str, "card": str, "date": str, "dirty": bool, "versions": dict,
            "command": str, "paths": list, "rows": list}


class RecordError(ValueError):
    """A record file that does not hold a valid record (the message names the file and field)."""


def cpu_name() -> str:
    """``CPU: <model>, <n> cores`` of this machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model}, {os.cpu_count()} cores"


def card_name() -> str:
    """The GPU this process sees (``torch.cuda.get_device_name``), else ``cpu_name()``."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()


def package_versions() -> dict[str, str | None]:
    """Python, torch, lightning, torch_geometric, torchmetrics (as run records give them), triton and CUDA."""
    from flare_lightning.runs.provenance import versions

    out = versions()
    try:
        out["triton"] = metadata.version("triton")
    except metadata.PackageNotFoundError:
        out["triton"] = None
    import torch

    out["cuda"] = torch.version.cuda  # None for a CPU build
    return out


def current_commit() -> tuple[str | None, bool]:
    """(commit, dirty) of the code that runs: git's HEAD and whether tracked files changed, else
    ``$FLARE_COMMIT`` (a ``-dirty`` or ``+dirty`` suffix marks a changed copy), else (None, False)."""
    from flare_lightning.runs.provenance import commit

    value = commit()
    if value == "unknown":
        return None, False
    for suffix in ("-dirty", "+dirty"):
        if value.endswith(suffix):
            return value.removesuffix(suffix), True
    return value, False


def script_command() -> str:
    """The command line that started this process, with the script's path relative to the repository."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT).as_posix() if script.is_relative_to(ROOT) else sys.argv[0]
    return shlex.join(["python", shown, *sys.argv[1:]])


def add_out_argument(parser: Any) -> None:
    """The ``--out`` option of a benchmark script: where its record goes."""
    parser.add_argument("--out", default=os.environ.get("OUT"),
                        help="folder for the record (default: $OUT, else benchmarks/records/<benchmark>/)")


def _script_path() -> list[str]:
    script = Path(sys.argv[0]).resolve()
    return [script.relative_to(ROOT).as_posix()] if script.is_file() and script.is_relative_to(ROOT) else []


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def record_name(record: dict[str, Any]) -> str:
    """``<date>_<commit7>[-dirty]_<card>.json``: records of one benchmark sort by date."""
    stamp = record["date"].replace(":", "").replace("-", "")
    commit = (record["commit"] or "nocommit")[:7] + ("-dirty" if record["dirty"] else "")
    return f"{stamp}_{commit}_{_slug(record['card'])}.json"


def make_record(benchmark: str, rows: list[dict[str, Any]], *, paths: list[str], card: str | None = None,
                command: str | None = None, host: str | None = None, environment: dict[str, Any] | None = None,
                date: str | None = None, commit: tuple[str | None, bool] | None = None,
                versions: dict[str, str | None] | None = None) -> dict[str, Any]:
    """A record of this run, checked like a read one; card, command, date, commit and versions left
    out are this process's."""
    sha, dirty = commit if commit is not None else current_commit()
    record = {
        "format": FORMAT, "benchmark": benchmark, "card": card or card_name(),
        "host": host,
        "date": date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": sha, "dirty": dirty, "versions": versions if versions is not None else package_versions(),
        "command": command or script_command(),
        "paths": list(paths), "rows": rows,
    }
    if environment:
        record["environment"] = environment
    check_record(record, f"record of {benchmark}")
    return record


def write_record(benchmark: str, rows: list[dict[str, Any]], *, paths: list[str], out: str | Path | None = None,
                 **fields: Any) -> Path:
    """Write a record of this run (``make_record``'s fields; the running script joins ``paths``,
    ``$FLARE_HOST`` is the default host) into ``out``, else into ``benchmarks/records/<benchmark>/``,
    whole or not at all; returns its path (a new name when one of that name exists, so an earlier
    record is never overwritten)."""
    from flare_lightning.atomic import atomic_write_text

    fields.setdefault("host", os.environ.get("FLARE_HOST"))
    record = make_record(benchmark, rows, paths=list(dict.fromkeys([*paths, *_script_path()])), **fields)
    folder = Path(out) if out is not None else RECORDS / benchmark
    path = free_path(folder / record_name(record))
    atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")
    print(f"record: {path}", flush=True)
    return path


def check_record(record: Any, where: str) -> None:
    """Raise ``RecordError`` naming ``where`` and the field when ``record`` is not a valid record."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a record is a JSON object, got {type(record).__name__}")
    for key, kind in REQUIRED.items():
        if key not in record:
            raise RecordError(f"{where}: field {key!r} is missing")
        if not isinstance(record[key], kind):
            raise RecordError(f"{where}: field {key!r} should be {kind.__name__}, got {type(record[key]).__name__}")
    if record["format"] != FORMAT:
        raise RecordError(f"{where}: format {record['format']} is not {FORMAT}, the one this code reads")
    if not (record.get("commit") is None or isinstance(record["commit"], str)):
        raise RecordError(f"{where}: field 'commit' should be a string or null")
    if not record["paths"] or not all(isinstance(p, str) and p and not p.startswith("/") for p in record["paths"]):
        raise RecordError(f"{where}: field 'paths' should list repository-relative paths, got {record['paths']!r}")
    if not all(isinstance(row, dict) for row in record["rows"]):
        raise RecordError(f"{where}: field 'rows' should hold objects")


def read_record(path: Path, text: str | None = None) -> dict[str, Any]:
    """The record in ``path`` (or in ``text``, that file's contents already read), checked."""
    try:
        record = json.loads(path.read_text() if text is None else text)
    except (OSError, ValueError) as err:
        raise RecordError(f"{path}: not a readable JSON file ({err})") from err
    check_record(record, str(path))
    return record


def read_records(folder: Path = RECORDS) -> dict[Path, dict[str, Any]]:
    """Every record under ``folder`` (``<benchmark>/*.json``), by path, in path order; a record
    must sit in the folder of its benchmark."""
    records = {}
    for path in sorted(folder.glob("*/*.json")):
        record = read_record(path)
        if record["benchmark"] != path.parent.name:
            raise RecordError(f"{path}: benchmark {record['benchmark']!r} sits in the folder of {path.parent.name!r}")
        records[path] = record
    return records


@dataclass(frozen=True)
class Staleness:
    """Whether a record still measures the code as it is: ``state`` is ``current``, ``stale``
    (files on its paths changed since its commit: ``changed``), ``dirty`` (measured on a tree
    with uncommitted changes) or ``unknown commit`` (none, or not in this repository's history)."""

    state: str
    changed: tuple[str, ...] = ()

    def describe(self, commit: str | None, most: int = 5) -> str:
        if self.state == "unknown commit":
            return f"commit {commit or '(none)'} is not in this repository's history"
        if self.state == "dirty":
            return "measured on a tree with uncommitted changes: what ran is not in the history"
        if self.state == "stale":
            shown = ", ".join(f"`{p}`" for p in self.changed[:most])
            more = f" and {len(self.changed) - most} more" if len(self.changed) > most else ""
            return f"{len(self.changed)} files on its measured paths changed since {commit[:7]}: {shown}{more}"
        return "current"


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def resolve_commit(commit: str | None, repo: Path = ROOT) -> str | None:
    """The full hash of ``commit`` in ``repo``'s history, or None."""
    if not commit:
        return None
    out = _git(repo, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    return out.stdout.strip() if out.returncode == 0 else None


def staleness(record: dict[str, Any], repo: Path = ROOT) -> Staleness:
    """Compare the record's measured paths at its commit with the work tree (tracked changes and
    new untracked files), so a page rendered before a commit reads the same after it."""
    full = resolve_commit(record.get("commit"), repo)
    if full is None:
        return Staleness("unknown commit")
    if record["dirty"]:
        return Staleness("dirty")
    diff = _git(repo, "diff", "--name-only", full, "--", *record["paths"])
    new = _git(repo, "ls-files", "--others", "--exclude-standard", "--", *record["paths"])
    if diff.returncode or new.returncode:
        raise RuntimeError(f"git diff {full} -- {record['paths']} failed in {repo}: {diff.stderr or new.stderr}")
    changed = sorted(set(diff.stdout.split()) | set(new.stdout.split()))
    return Staleness("stale", tuple(changed)) if changed else Staleness("current")


def commit_order(commit: str | None, repo: Path = ROOT) -> tuple[int, int] | None:
    """(committer time in Unix seconds, commits in its history) of ``commit`` in ``repo``, which
    orders commits made within one second too; None when it is not there."""
    full = resolve_commit(commit, repo)
    if full is None:
        return None
    seconds = _git(repo, "show", "-s", "--format=%ct", full).stdout.strip()
    count = _git(repo, "rev-list", "--count", full).stdout.strip()
    return int(seconds), int(count)


def free_path(path: Path, same: Callable[[Path], bool] = lambda taken: False) -> Path:
    """``path``, or the first of ``<stem>_2.json``, ``<stem>_3.json``, ... that does not exist or whose
    file ``same`` accepts: a record never overwrites a different one."""
    candidate, counter = path, 2
    while candidate.exists() and not same(candidate):
        candidate = path.with_name(f"{path.stem}_{counter}{path.suffix}")
        counter += 1
    return candidate


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two records of one run: equal but for the ``source`` note a reader may have added since."""
    return {k: v for k, v in a.items() if k != "source"} == {k: v for k, v in b.items() if k != "source"}


def collect_records(source: Path, dest: Path = RECORDS) -> list[Path]:
    """Copy every record under ``source`` (any depth) into ``dest/<benchmark>/``, whole or not at all;
    returns the new files. A record of the same run already there is skipped (a ``source`` note added
    to it is kept); a different record of the same name is kept and the new one takes the next free
    name. JSON files that are no records are reported."""
    from flare_lightning.atomic import atomic_write_text

    copied = []
    for path in sorted(Path(source).rglob("*.json")):
        try:
            text = path.read_text()  # read once: what is checked is what is copied
            record = read_record(path, text)
        except (OSError, RecordError) as err:  # both name the file
            print(f"not a record, left: {err}", file=sys.stderr)
            continue
        target = free_path(dest / record["benchmark"] / path.name,
                           lambda taken: _same_run(json.loads(taken.read_text()), record))
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
        copied.append(target)
        print(f"record: {target}")
    return copied


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Benchmark records: bring records made elsewhere home.")
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="copy the records under FOLDER into benchmarks/records/<benchmark>/")
    collect.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"collect: {args.folder} is not a folder")
    copied = collect_records(args.folder)
    print(f"{len(copied)} new record(s); re-render with `python benchmarks/render.py`")


if __name__ == "__main__":
    main()
