"""Train the quickstart config with each mixer backend and compare test accuracy (issue 4).

Runs ``fit`` on ``configs/quickstart.yaml`` (which tests the best checkpoint afterwards) for
every backend x precision x seed, concurrently on one GPU, and prints each run's test
relative L2 with the mean and spread over seeds: the spread between seeds of one backend
is the noise that a difference between backends is judged against. The errors are written as a
record (``benchmarks/records.py``) into ``--records``, default ``$OUT``, else
``benchmarks/records/quickstart_backends/``.

    PYTHONPATH=$PWD python benchmarks/quickstart_backends.py --backends triton sdpa --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks.` imports resolve
from benchmarks.records import write_record

ROOT = Path(__file__).resolve().parents[1]
MEASURES = ["flare_lightning/", "datamodules/", "configs/quickstart.yaml"]  # what a quickstart fit runs


def launch(backend: str, precision: str, seed: int, out: Path, extra: list[str]) -> tuple[subprocess.Popen, Path]:
    name = f"{backend}_{precision}_s{seed}"
    cmd = [
        sys.executable, "-m", "flare_lightning", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
        "--seed_everything", str(seed),
        "--model.model.init_args.mixer_backend", backend,
        "--trainer.precision", precision,
        "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.logger.init_args.name", name,
        *extra,
    ]
    with open(out / f"{name}.log", "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), out / name


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["triton", "sdpa"])
    p.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "backends", help="folder of the runs")
    p.add_argument("--records", default=os.environ.get("OUT"),
                   help="folder for the record (default: $OUT, else benchmarks/records/quickstart_backends/)")
    p.add_argument("extra", nargs="*", help="more CLI overrides, after --")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    runs = {key: launch(*key, args.out, args.extra) for key in itertools.product(args.backends, args.precisions, args.seeds)}
    results = {}
    for key, (proc, run_dir) in runs.items():
        rc = proc.wait()
        files = sorted(run_dir.glob("version_*/test_metrics.json"))
        if rc != 0 or not files:
            print(f"{key}: failed (exit {rc}); see {args.out}/{run_dir.name}.log")
            continue
        results[key] = json.loads(files[-1].read_text())["test/rel_l2"]
    print(f"{len(runs)} runs in {time.time() - start:.0f} s (concurrent)")
    print("| backend | precision | seed | test rel. L2 |\n|---|---|---|---|")
    for (b, pr, s), v in results.items():
        print(f"| {b} | {pr} | {s} | {v:.4f} |")
    print("\n| backend | precision | mean | min | max |\n|---|---|---|---|---|")
    for b, pr in itertools.product(args.backends, args.precisions):
        vals = [v for (bb, pp, _), v in results.items() if (bb, pp) == (b, pr)]
        if vals:
            print(f"| {b} | {pr} | {statistics.mean(vals):.4f} | {min(vals):.4f} | {max(vals):.4f} |")
    rows = [{"backend": b, "precision": pr, "seed": s, "rel_l2": v} for (b, pr, s), v in results.items()]
    write_record("quickstart_backends", rows, paths=MEASURES, out=args.records)


if __name__ == "__main__":
    main()
