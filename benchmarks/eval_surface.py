"""`flare test` of the DrivAerML-1M config on full-resolution surfaces, end to end (issue 26 item 2).

``benchmarks/step.py --eval`` times the model alone on one surface; this times what a user runs:
``flare test --config configs/drivaerml_1m.yaml`` reading each run from disk, evaluating every point
in chunks, and computing the field errors and the drag and lift coefficients. The data is a synthetic
set in the presampled layout (``run_<i>.npz``: ``surface_mesh_centers``, ``surface_fields``, and the
``surface_normals``/``surface_areas`` that Cd and Cl need; random values, the time does not depend on
them), written once under ``--root``. A checkpoint comes from one training step of the shipped config;
the test then runs the shipped model (compiled, fused kernels, ``eval_chunk_size`` 2^20) run by run:
``s / run`` is the median over the runs after the first (which also compiles), wall time from the
batch's start to its end after a device sync, the host-to-device copy and the metrics included.

    python benchmarks/eval_surface.py --root /tmp/eval_surface --points 8800000 --runs 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks.` imports and class paths resolve

from benchmarks.drivaerml_memory import write_set  # noqa: E402
from benchmarks.records import add_out_argument, write_record  # noqa: E402

CONFIG = REPO / "configs" / "drivaerml_1m.yaml"
MEASURES = ["flare_lightning/", "datamodules/", "configs/drivaerml_1m.yaml"]
TRAIN_RUNS = 2  # one trains the checkpoint's step, one validates


class RunTimer(L.Callback):
    """Seconds of each test batch (one run), from its start to its end after a device sync."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._sync()
        self.seconds.append(time.perf_counter() - self._start)


def common_args(root: Path, extra: list[str]) -> list[str]:
    """The shipped config on the synthetic set, quiet, its run folder under ``root``."""
    return [f"--config={CONFIG}", f"--data.init_args.root={root}", "--data.init_args.n_val=1",
            f"--trainer.default_root_dir={root / 'runs'}", f"--trainer.logger.init_args.save_dir={root / 'runs'}",
            "--trainer.enable_progress_bar=false", *extra]


def measure(root: Path, points: int, runs: int, extra: list[str]) -> dict:
    """Write the set, train one step for a checkpoint, test it run by run; the row of the record."""
    from unittest import mock

    from flare_lightning.cli import make_cli

    write_set(root, TRAIN_RUNS, points, test_runs=runs, geometry=True)
    with mock.patch("sys.argv", ["flare"]):
        make_cli(["fit", *common_args(root, extra), "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
                  "--test_after_fit=false", "--model.model.init_args.compile=false"])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        cli = make_cli(["test", *common_args(root, extra), "--ckpt_path=last",
                        "--trainer.callbacks+=benchmarks.eval_surface.RunTimer"])
    timer = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "RunTimer")  # the CLI's import of it
    forces = (getattr(cli.model, "test_report", None) or {}).get("test/forces", {})
    later = timer.seconds[1:] or timer.seconds
    return {"points": points, "runs": len(timer.seconds), "chunk": cli.model.model.eval_chunk_size,
            "s_per_run": statistics.median(later), "first_run_s": timer.seconds[0],
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None,
            "cd_cl_runs": len(forces.get("runs", [])),
            "rel_l2": float(cli.trainer.callback_metrics["test/rel_l2"])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="folder of the synthetic set (written if absent)")
    parser.add_argument("--points", type=int, default=8_800_000, help="points per run (a whole DrivAerML surface: ~8.8M)")
    parser.add_argument("--runs", type=int, default=4, help="test runs")
    parser.add_argument("extra", nargs="*", help="more `flare` options for the fit and the test, after --")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    row = measure(args.root, args.points, args.runs, args.extra)
    print(f"{row['runs']} runs of {row['points']:,} points: {row['s_per_run']:.2f} s per run after the first "
          f"({row['first_run_s']:.1f} s), peak {row['peak_gb'] or 0:.2f} GB, Cd/Cl of {row['cd_cl_runs']} runs")
    command = " ".join(["python", "benchmarks/eval_surface.py", *(sys.argv[1:] if argv is None else argv)])
    write_record("eval_surface", [row], paths=MEASURES, out=args.out, command=command)
    return row


if __name__ == "__main__":
    main()
