"""Choose the quickstart recipe on generated Darcy variants it was not tuned on (issue 28 item 5).

The quickstart recipe (``configs/quickstart.yaml``: data size, epochs, learning rate, weight
decay) must train in four minutes on 2 CPU cores, and a recipe tuned on its own 21x21 set can
win there and lose elsewhere. This script trains each candidate recipe with a real ``flare fit``
of ``configs/quickstart.yaml`` (its model, loss and loop; the recipe's values set on the command
line) on variants of the generated data that no recipe was chosen on, and ranks the recipes by
their mean **validation** relative L2 over every (variant, seed) run. The test error of each run
is recorded beside it and never used to choose.

| variant | grid | permeability (GRF >= 0 / < 0) |
|---|---|---|
| ``r16`` | 16x16 | 12 / 3 (the FNO contrast, 4) |
| ``r32`` | 32x32 | 12 / 3 |
| ``c12`` | 21x21 | 12 / 1 (contrast 12) |

A seed ``s`` sets ``seed_everything`` and the data: the training file is drawn with
``gen_seed = 100 + 2 s`` (the test file with the next seed), so no variant shares a field with
the shipped 21x21 set (seeds 0 and 1). Each (variant, seed) gets its own data folder and file
names, made here once before any run with room for the largest recipe (``n_train + n_val``
samples), so every recipe of a (variant, seed) tests on the same samples; a recipe validates on
the ``n_val`` samples after its own training samples. Runs drop the config's analysis callbacks
(spectra, figures: they cost time and train nothing) and take ``--n-val`` validation samples (default 100,
the config's 20 is too few to rank recipes on). ``--epoch-scale`` shortens every recipe's
epochs by the same factor (the OneCycle schedule follows), for sweeps that must fit less CPU
time; the record says which scale ran.

Each run's rows (recipe, variant, seed, validation and test rel. L2, wall seconds) are written
as a record (``benchmarks/records.py``, at the commit the runs started from) into ``--out``
(default ``$OUT``, else ``benchmarks/records/quickstart_recipes/``); RESULTS.md shows their mean
and spread per recipe and variant (``benchmarks/sections.py``). ``--rows-from`` joins the runs of
an earlier record of the same settings (a sweep extended by a seed: the record says which rows
came from where).

    PYTHONPATH=$PWD python benchmarks/quickstart_recipes.py                     # the whole sweep
    PYTHONPATH=$PWD python benchmarks/quickstart_recipes.py --recipes n400-e27-lr3e-3 --variants r16 \\
        --seeds 0 --epoch-scale 0.05                                            # a quick look
    PYTHONPATH=$PWD python benchmarks/quickstart_recipes.py --jobs 2 --seeds 2 \\
        --rows-from benchmarks/records/quickstart_recipes/<seeds 0 and 1>.json  # one more seed
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `benchmarks.` and `datamodules.` import

from benchmarks.records import add_out_argument, current_commit, read_record, write_record  # noqa: E402
from benchmarks.sections import recipe_summary  # noqa: E402

CONFIG = ROOT / "configs" / "quickstart.yaml"
MEASURES = ["flare_lightning/", "datamodules/", "configs/quickstart.yaml"]  # what a quickstart fit runs
BATCH = 4  # the config's batch size: every recipe's steps are n_train / 4 per epoch


@dataclass(frozen=True)
class Recipe:
    """The values a recipe sets on top of the config; each sets all four, so no recipe
    inherits the config's."""

    n_train: int
    epochs: int
    lr: float
    weight_decay: float

    def steps(self, epoch_scale: float = 1.0) -> int:
        return self.n_train // BATCH * scaled(self.epochs, epoch_scale)

    def describe(self) -> str:
        return f"{self.n_train} train, {self.epochs} epochs, lr {self.lr:g}, weight decay {self.weight_decay:g}"


@dataclass(frozen=True)
class Variant:
    """Generated data a recipe was not chosen on: grid size and (high, low) permeability."""

    label: str
    resolution: int
    permeability: tuple[float, float]

    def folder(self, seed: int) -> str:
        high, low = self.permeability
        return f"r{self.resolution}_p{high:g}-{low:g}_s{seed}"


# 2,700 training steps each (batch 4), the shipped recipe's budget: each fits the four minutes
RECIPES = {
    "n400-e27-lr3e-3": Recipe(400, 27, 3e-3, 1e-5),         # configs/quickstart.yaml before this sweep
    "n200-e54-lr2e-3": Recipe(200, 54, 2e-3, 1e-5),         # the earlier 60-epoch recipe's data and lr, cut to fit
    "n400-e27-lr1.5e-3": Recipe(400, 27, 1.5e-3, 1e-5),     # the 27-epoch recipe at half the peak lr
    "n600-e18-lr3e-3": Recipe(600, 18, 3e-3, 1e-5),         # 1.5x the samples, 2/3 the epochs
}
VARIANTS = {
    "r16": Variant("16x16", 16, (12.0, 3.0)),
    "r32": Variant("32x32", 32, (12.0, 3.0)),
    "c12": Variant("21x21, contrast 12", 21, (12.0, 1.0)),
}


def scaled(epochs: int, epoch_scale: float) -> int:
    return max(1, round(epochs * epoch_scale))


def gen_seed(seed: int) -> int:
    """The training file's generator seed (the test file's is the next): clear of the shipped set's 0 and 1."""
    return 100 + 2 * seed


def data_args(variant: Variant, seed: int, data_root: Path, n_val: int, n_test: int) -> list[str]:
    """``flare fit`` options reading (and, when absent, making) one (variant, seed)'s files."""
    folder = variant.folder(seed)
    return [
        f"--data.init_args.root={data_root / folder}",
        f"--data.init_args.train_file=darcy_gen_{folder}_train.mat",
        f"--data.init_args.test_file=darcy_gen_{folder}_test.mat",
        f"--data.init_args.gen_resolution={variant.resolution}",
        f"--data.init_args.gen_permeability=[{variant.permeability[0]},{variant.permeability[1]}]",
        f"--data.init_args.gen_seed={gen_seed(seed)}",
        f"--data.init_args.n_val={n_val}",
        f"--data.init_args.n_test={n_test}",
    ]


def recipe_args(recipe: Recipe, epoch_scale: float) -> list[str]:
    return [
        f"--data.init_args.n_train={recipe.n_train}",
        f"--trainer.max_epochs={scaled(recipe.epochs, epoch_scale)}",
        f"--model.lr={recipe.lr}",
        f"--model.weight_decay={recipe.weight_decay}",
    ]


def make_data(variant: Variant, seed: int, data_root: Path, n_train: int, n_val: int, n_test: int) -> None:
    """Generate one (variant, seed)'s files through the datamodule, with ``n_train + n_val`` training-file samples."""
    from datamodules.darcy import DarcyDataModule

    folder = variant.folder(seed)
    DarcyDataModule(
        root=str(data_root / folder), train_file=f"darcy_gen_{folder}_train.mat",
        test_file=f"darcy_gen_{folder}_test.mat", n_train=n_train, n_val=n_val, n_test=n_test, stride=1,
        gen_resolution=variant.resolution, gen_seed=gen_seed(seed), gen_permeability=variant.permeability,
    ).prepare_data()


def run_name(recipe: str, variant: str, seed: int) -> str:
    return f"{recipe}_{variant}_s{seed}"


def fit_command(recipe: str, variant: str, seed: int, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "flare_lightning", "fit", f"--config={CONFIG}",
        f"--seed_everything={seed}",
        *recipe_args(RECIPES[recipe], args.epoch_scale),
        *data_args(VARIANTS[variant], seed, args.data, args.n_val, args.n_test),
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={args.runs}",
        f"--trainer.logger.init_args.save_dir={args.runs}",
        f"--trainer.logger.init_args.name={run_name(recipe, variant, seed)}",
    ]


def best_val(metrics_csv: Path) -> float:
    """The lowest ``val/rel_l2`` of a run's metrics.csv: the one its best checkpoint was chosen on."""
    with open(metrics_csv, newline="") as f:
        values = [float(row["val/rel_l2"]) for row in csv.DictReader(f) if row.get("val/rel_l2")]
    if not values:
        raise ValueError(f"{metrics_csv}: no val/rel_l2 values")
    return min(values)


def run_row(recipe: str, variant: str, seed: int, run_dir: Path, wall_s: float, epoch_scale: float) -> dict[str, Any]:
    """The record row of one finished run, from its folder (``version_0``: metrics.csv, test_metrics.json)."""
    test = json.loads((run_dir / "test_metrics.json").read_text())
    return {
        "recipe": recipe, "variant": VARIANTS[variant].label, "seed": seed,
        "val_rel_l2": best_val(run_dir / "metrics.csv"), "test_rel_l2": test["test/rel_l2"],
        "wall_s": round(wall_s, 1), "steps": RECIPES[recipe].steps(epoch_scale),
    }


def earlier_rows(path: Path, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of an earlier record of this sweep made with the same settings, less the
    (recipe, variant, seed) runs this one makes, and a note of where they came from."""
    record = read_record(path)
    env = record.get("environment", {})
    same = {"epoch_scale": args.epoch_scale, "n_val": args.n_val, "n_test": args.n_test}
    if record["benchmark"] != "quickstart_recipes" or any(env.get(k) != v for k, v in same.items()):
        raise SystemExit(f"--rows-from {path}: not a quickstart_recipes record with {same}")
    planned = {(r, VARIANTS[v].label, s) for r in args.recipes for v in args.variants for s in args.seeds}
    rows = [row for row in record["rows"] if (row["recipe"], row["variant"], row["seed"]) not in planned]
    return rows, {"record": path.name, "commit": record["commit"], "dirty": record["dirty"], "rows": len(rows),
                  "recipes": env.get("recipes", {}), "variants": env.get("variants", {})}


def print_summary(rows: list[dict[str, Any]]) -> None:
    """The table RESULTS.md shows of these rows (``sections.recipe_summary``)."""
    print("| recipe | variant | runs | val rel. L2 | test rel. L2 | wall s | rank |\n|---|---|---|---|---|---|---|")
    for s in recipe_summary(rows):
        (val, val_sd), (test, test_sd) = s["val"], s["test"]
        print(f"| {s['recipe']} | {s['variant']} | {s['runs']} | {val:.4f} ± {val_sd:.4f} | {test:.4f} ± {test_sd:.4f} | "
              f"{s['wall_s']:.0f} | {s['rank'] or ''} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epoch-scale", type=float, default=1.0,
                   help="every recipe's epochs times this (rounded, at least 1): the same cut for all")
    p.add_argument("--n-val", type=int, default=100, help="validation samples per run (the config has 20)")
    p.add_argument("--n-test", type=int, default=50, help="test samples per run (the config's)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (OMP_NUM_THREADS; default: the cores / jobs)")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "quickstart_recipes", help="generated variants")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "quickstart_recipes", help="run folders and logs")
    p.add_argument("--rows-from", type=Path, default=None,
                   help="an earlier record of this sweep (same epoch scale, n_val, n_test) whose other runs join this "
                        "one's record, e.g. to add a seed")
    add_out_argument(p)
    args = p.parse_args(argv)
    if not math.isfinite(args.epoch_scale) or args.epoch_scale <= 0:
        p.error(f"--epoch-scale must be > 0, got {args.epoch_scale}")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    commit = current_commit()  # the code the runs import, whatever is committed while they train
    joined, joined_from = earlier_rows(args.rows_from, args) if args.rows_from else ([], None)
    n_train = max(r.n_train for r in RECIPES.values())  # one file per (variant, seed) serves every recipe
    for variant, seed in itertools.product(args.variants, args.seeds):
        make_data(VARIANTS[variant], seed, args.data, n_train, args.n_val, args.n_test)
    args.runs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    # seed-major order: a sweep cut short still holds whole seeds of every recipe and variant
    queue = [(r, v, s) for s in args.seeds for v in args.variants for r in args.recipes]
    running: dict[tuple[str, str, int], tuple[subprocess.Popen, float]] = {}
    rows, failed = [], []
    start = time.time()
    while queue or running:
        while queue and len(running) < args.jobs:
            key = queue.pop(0)
            with open(args.runs / f"{run_name(*key)}.log", "w") as log:  # the child keeps its own handle
                running[key] = (subprocess.Popen(fit_command(*key, args), cwd=ROOT, env=env, stdout=log,
                                                 stderr=subprocess.STDOUT), time.time())
        time.sleep(1.0)
        for key, (proc, began) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            run_dir = args.runs / run_name(*key) / "version_0"
            try:
                if proc.returncode != 0:
                    raise RuntimeError(f"exit {proc.returncode}")
                row = run_row(*key, run_dir, time.time() - began, args.epoch_scale)
            except (RuntimeError, OSError, ValueError, KeyError) as err:
                failed.append(run_name(*key))
                print(f"{run_name(*key)}: failed ({err}); see {args.runs / run_name(*key)}.log", flush=True)
                continue
            rows.append(row)
            print(f"{run_name(*key)}: val {row['val_rel_l2']:.4f}, test {row['test_rel_l2']:.4f}, "
                  f"{row['wall_s']:.0f} s ({len(rows) + len(failed)} of {len(rows) + len(failed) + len(queue) + len(running)},"
                  f" {time.time() - start:.0f} s in)", flush=True)
    rows = joined + rows
    print_summary(rows)
    environment = {"epoch_scale": args.epoch_scale, "n_val": args.n_val, "n_test": args.n_test, "jobs": args.jobs,
                   "threads_per_run": threads, "seeds": args.seeds, "failed": failed,
                   "recipes": {name: RECIPES[name].describe() for name in args.recipes},
                   "variants": {VARIANTS[v].label: f"{VARIANTS[v].resolution}x{VARIANTS[v].resolution}, permeability "
                                f"{VARIANTS[v].permeability[0]:g}/{VARIANTS[v].permeability[1]:g}" for v in args.variants}}
    if joined_from:
        environment["rows_from"] = joined_from
    write_record("quickstart_recipes", rows, paths=MEASURES, out=args.out, environment=environment, commit=commit)


if __name__ == "__main__":
    main()
