"""Time the quickstart end to end as a new user runs it, and record its wall time and test error.

Runs ``python -m flare_lightning fit --config configs/quickstart.yaml`` unchanged in a fresh
empty folder (the config's relative ``data/`` and ``runs/`` land there, so the data is generated
in the timed run, as on first use), from the start of the process to its exit, and writes a
``quickstart`` record (``benchmarks/records.py``) with the row ``shipped``: training steps, wall
seconds, the best checkpoint's test rel. L2. The quickstart's target is an idle machine: the
script waits until the 1-minute load average is below ``--max-load`` (or gives up after
``--wait`` seconds) and records the load averages before and after the run.

    PYTHONPATH=$PWD python benchmarks/quickstart_time.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `benchmarks.` imports resolve

from benchmarks.records import add_out_argument, write_record  # noqa: E402

CONFIG = ROOT / "configs" / "quickstart.yaml"
MEASURES = ["flare_lightning/", "datamodules/", "configs/quickstart.yaml"]  # what a quickstart fit runs


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def wait_for_idle(max_load: float, wait_s: float) -> tuple[float, float, float] | None:
    """The load averages once the 1-minute one is below ``max_load`` (the reading the run starts
    on), or None when it stays above for ``wait_s`` seconds."""
    deadline = time.time() + wait_s
    while (load := load_average())[0] >= max_load:
        if time.time() > deadline:
            return None
        time.sleep(10)
    return load


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-load", type=float, default=0.5, help="start only below this 1-minute load average")
    p.add_argument("--wait", type=float, default=1800, help="seconds to wait for it before giving up")
    add_out_argument(p)
    args = p.parse_args(argv)
    from flare_lightning.runs.provenance import checkpoint_info

    with tempfile.TemporaryDirectory(prefix="quickstart_time_") as folder:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's package and datamodules, from any folder
        before = wait_for_idle(args.max_load, args.wait)
        if before is None:
            sys.exit(f"the 1-minute load average stayed >= {args.max_load} for {args.wait:.0f} s: not an idle machine")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "flare_lightning", "fit", f"--config={CONFIG}"], cwd=folder, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall_s = time.perf_counter() - start
        after = load_average()
        if done.returncode != 0:
            sys.exit(f"flare fit failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        run = Path(folder) / "runs" / "quickstart" / "version_0"
        rel_l2 = json.loads((run / "test_metrics.json").read_text())["test/rel_l2"]
        steps = checkpoint_info(run / "checkpoints" / "last.ckpt")["global_step"]
    print(f"{wall_s:.1f} s end to end, test rel. L2 {rel_l2:.4f}, {steps} steps; load {before} -> {after}")
    rows = [{"recipe": "shipped", "steps": steps, "wall_s": round(wall_s, 1), "rel_l2": rel_l2}]
    write_record("quickstart", rows, paths=MEASURES, out=args.out,
                 command="python -m flare_lightning fit --config configs/quickstart.yaml (in a fresh folder: "
                         "data generated in the run), timed by benchmarks/quickstart_time.py",
                 environment={"load_average_before": [round(x, 2) for x in before],
                              "load_average_after": [round(x, 2) for x in after], "torch_threads": "default"})


if __name__ == "__main__":
    main()
