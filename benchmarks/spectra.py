"""The spectra of docs/spectral.md as a record: the shipped quickstart's test-time spectral analysis.

Runs ``python -m flare_lightning fit --config configs/quickstart.yaml`` unchanged in a fresh folder
(data generated in the run; the config's ``SpectralAnalysis`` callback analyses the tested
checkpoint on 4 test samples), or takes a finished run with ``--run``, and writes a ``spectra``
record: one row per block (effective rank and |λ₂| of ``W_dec W_enc``, lowest and highest over
heads, each a mean over samples; the heads' spectra and mixing diversity), the test rel. L2, and
the whole ``spectral/test.json`` summary in the record's environment. The figure of
docs/spectral.md is drawn from the record (``--figure``), so the page, its table (rendered by
``benchmarks/render.py``) and the figure are one run.

    PYTHONPATH=$PWD python benchmarks/spectra.py                 # fit (~3 min on 2 cores), record, draw
    PYTHONPATH=$PWD python benchmarks/spectra.py --run runs/quickstart/version_0
    PYTHONPATH=$PWD python benchmarks/spectra.py --figure-only   # redraw the figure from the newest record
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `benchmarks.` imports resolve

from benchmarks.records import RECORDS, add_out_argument, read_records, write_record  # noqa: E402

CONFIG = ROOT / "configs" / "quickstart.yaml"
FIGURE = ROOT / "docs" / "figures" / "spectra.png"
MEASURES = ["flare_lightning/", "datamodules/", "configs/quickstart.yaml"]  # what a quickstart fit runs


def block_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per block of a ``SpectralAnalysis`` summary: ranges over heads of the per-head
    means over samples (effective rank, |λ₂|: the second largest eigenvalue magnitude) and the
    block's head diversity (mean over samples)."""
    rows = []
    for i, block in enumerate(summary["blocks"]):
        ranks = block["effective_rank"]["mean"]
        lambda2 = [head[1] for head in block["eigenvalue_abs"]["mean"]]  # sorted by magnitude, largest first
        rows.append({
            "block": i, "eff_rank_min": min(ranks), "eff_rank_max": max(ranks),
            "lambda2_min": min(lambda2), "lambda2_max": max(lambda2),
            "diversity_spectra": block["diversity"]["spectra"]["mean"],
            "diversity_mixing": block["diversity"]["mixing"]["mean"],
        })
    return rows


def fit_quickstart(folder: Path) -> Path:
    """Run the shipped quickstart in ``folder``; returns its run folder."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "flare_lightning", "fit", f"--config={CONFIG}"], cwd=folder, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"flare fit failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return folder / "runs" / "quickstart" / "version_0"


def record_run(run: Path, out: str | None, command: str) -> Path:
    """Write the ``spectra`` record of a finished quickstart run folder."""
    test_json, metrics = run / "spectral" / "test.json", run / "test_metrics.json"
    for path in (test_json, metrics):
        if not path.is_file():
            sys.exit(f"{path}: missing; --run must be a finished quickstart run (fit, then test, with SpectralAnalysis)")
    summary = json.loads(test_json.read_text())
    rel_l2 = json.loads(metrics.read_text())["test/rel_l2"]
    kept = {k: summary[k] for k in ("num_samples", "num_blocks", "num_heads", "num_latents", "blocks", "epoch",
                                    "global_step", "sample_ids", "points")}
    return write_record("spectra", block_rows(summary), paths=MEASURES, out=out, command=command,
                        environment={"config": "configs/quickstart.yaml", "test_rel_l2": rel_l2, "summary": kept})


def newest_record(records: Path = RECORDS) -> dict[str, Any]:
    found = sorted((r for r in read_records(records).values() if r["benchmark"] == "spectra"), key=lambda r: r["date"])
    if not found:
        sys.exit(f"no spectra record in {records / 'spectra'}: run benchmarks/spectra.py first")
    return found[-1]


def draw(record: dict[str, Any], path: Path = FIGURE) -> Path:
    """The figure of docs/spectral.md from a ``spectra`` record."""
    from flare_lightning.analysis.plots import plot_spectra, save_figure

    summary = record["environment"]["summary"]
    title = f"Quickstart model, test rel. L2 {record['environment']['test_rel_l2']:.3f} (commit {record['commit'][:7]})"
    return save_figure(plot_spectra(summary, title=title), path, dpi=130)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a finished quickstart run folder (default: fit one here and now)")
    p.add_argument("--figure-only", action="store_true", help="only redraw the figure from the newest record")
    p.add_argument("--no-figure", action="store_true", help="record only")
    add_out_argument(p)
    args = p.parse_args(argv)
    if not args.figure_only:
        if args.run is not None:
            path = record_run(args.run, args.out, f"python benchmarks/spectra.py --run {args.run}")
        else:
            with tempfile.TemporaryDirectory(prefix="spectra_") as folder:
                path = record_run(fit_quickstart(Path(folder)), args.out,
                                  "python -m flare_lightning fit --config configs/quickstart.yaml (in a fresh folder), "
                                  "recorded by benchmarks/spectra.py")
        record = json.loads(path.read_text())
    else:
        record = newest_record()
    if not args.no_figure:
        print(f"figure: {draw(record)}")


if __name__ == "__main__":
    main()
