"""A GPU test run (``scripts/gpu_tests.sh``) as a record: one row per test file of its JUnit report
(passed, failed, skipped, seconds, the failing tests' ids), so RESULTS.md says which card ran the
GPU tests at which commit and what came out, as it does for timings.

    python benchmarks/gpu_tests.py report.xml [--command "scripts/gpu_tests.sh ..."] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `benchmarks.` imports resolve

from benchmarks.records import add_out_argument, write_record  # noqa: E402

MEASURES = ["flare_lightning/", "datamodules/", "tests/", "scripts/gpu_tests.sh"]


def file_rows(report: Path, collected: int | None = None, wall_s: float | None = None,
              workers: int | None = None) -> list[dict[str, Any]]:
    """Per test file of a JUnit (xunit1) report: counts, seconds and failing test ids; then an
    ``all`` row of the totals, with ``not_run``: the tests collected beforehand that the report
    lacks (a session that pytest aborted, e.g. on an internal error, leaves some unrun), and the
    session's wall time and worker processes where given (with workers, less than the summed seconds)."""
    files: dict[str, dict[str, Any]] = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0,
                                                            "failures": []})
    for case in ET.parse(report).iter("testcase"):
        name = case.get("file") or case.get("classname", "?")
        row = files[name]
        row["seconds"] += float(case.get("time") or 0)
        outcome = {child.tag for child in case}
        if outcome & {"failure", "error"}:
            row["failed"] += 1
            row["failures"].append(case.get("name", "?"))
        elif "skipped" in outcome:
            row["skipped"] += 1
        else:
            row["passed"] += 1
    rows = [{"file": name, **row, "seconds": round(row["seconds"], 1)} for name, row in sorted(files.items())]
    total = {k: sum(r[k] for r in rows) for k in ("passed", "failed", "skipped")}
    everything = {"file": "all", **total, "seconds": round(sum(r["seconds"] for r in rows), 1),
                  "failures": [f"{r['file']}::{t}" for r in rows for t in r["failures"]]}
    if collected is not None:
        reported = sum(files[name][k] for name in files if name != "pytest" for k in ("passed", "failed", "skipped"))
        everything["not_run"] = max(0, collected - reported)
    if wall_s is not None:
        everything["wall_s"] = round(wall_s, 1)
    if workers is not None:
        everything["workers"] = workers
    return [*rows, everything]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path, help="pytest's --junitxml report (-o junit_family=xunit1)")
    p.add_argument("--command", default="scripts/gpu_tests.sh", help="the command that ran the tests")
    p.add_argument("--collected", type=int, help="how many tests the run selected (pytest --collect-only): "
                   "the all row then counts those the report lacks as not run")
    p.add_argument("--wall-s", type=float, help="the session's wall time in seconds")
    p.add_argument("--workers", type=int, help="pytest-xdist worker processes of the session (1: none)")
    p.add_argument("--no-record", action="store_true", help="print only")
    add_out_argument(p)
    args = p.parse_args(argv)
    rows = file_rows(args.report, args.collected, args.wall_s, args.workers)
    for row in rows:
        unrun = f", {row['not_run']} not run" if row.get("not_run") else ""
        wall = f", {row['wall_s']:.0f} s wall with {row.get('workers', 1)} worker(s)" if "wall_s" in row else ""
        print(f"{row['file']}: {row['passed']} passed, {row['failed']} failed, {row['skipped']} skipped{unrun} "
              f"({row['seconds']:.0f} s{wall})")
    if not args.no_record:
        write_record("gpu_tests", rows, paths=MEASURES, out=args.out, command=args.command)
    return rows


if __name__ == "__main__":
    main()
