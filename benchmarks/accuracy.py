"""Accuracy runs (issue 11): train FLARE and the baselines on the same data, and record the test
relative L2 of every run (benchmarks/records/accuracy/), from which benchmarks/ACCURACY.md is rendered.

Each run is ``flare fit --config <configs>`` (FLARE: configs/<dataset>.yaml; baselines: that,
then configs/baselines/<model>_<dataset>.yaml) with a seed and optionally a reduced epoch budget,
in its own folder ``<out>/<model>_<dataset>/seed<S>_<full|epN>/``. ``launch`` makes the data
once (in the foreground), then starts one background worker per entry of ``--devices``
(``CUDA_VISIBLE_DEVICES`` set; repeat an id to run several models side by side on one GPU);
each worker runs its queue one run after another, logs to ``<out>/logs/``, and records
start, end, card and commit in ``launch.json`` beside the run. Launching again skips runs
with a finished ``test_metrics.json`` and resumes interrupted ones from ``last.ckpt``, with the
same options only: a run folder made with others (another precision, say) stops the launch
before it starts, naming the folder (use another ``--out`` for the new settings).

    python benchmarks/accuracy.py launch --devices 0 1 --epochs 50 --dry-run   # print the plan
    python benchmarks/accuracy.py launch --devices 0 0 1 1 --epochs 50 [--fast-step] [-- --trainer.precision bf16-mixed]
    python benchmarks/accuracy.py launch --devices 0 1 --fast-step -- --trainer.precision bf16-mixed   # full protocol
    python benchmarks/accuracy.py launch --devices 0,1 --models transformer --datasets darcy --fast-step   # DDP on 2 GPUs

A DDP run (``--devices 0,1``) splits the config's batch over its GPUs: the same global batch,
steps per epoch and schedule as one GPU, only the order of the samples differs.
Launch every run of a machine from one ``launch`` (workers get their share of the CPU cores as
OpenMP threads; separate launches each assume the whole machine). In float32 the fast step is
4x slower on Darcy (the fp32 mixer): full-protocol runs use bf16-mixed, as the step benchmarks do.
    python benchmarks/accuracy.py collect       # a record per finished run -> benchmarks/records/accuracy/, pages re-rendered

A precision ablation runs each arm in its own folder (a run folder keeps its settings): ``--arms`` names
them (``ARMS``: 32-true, 32-tf32, bf16, bf16-fp32<part>, ...), one launch runs them all, side by side on
the workers of ``--devices``, and ``collect`` finds each arm's folder; records are keyed by precision too,
so the arms sit side by side in ACCURACY.md:
    python benchmarks/accuracy.py launch --models flare --datasets elasticity --seeds 0 --fast-step \
        --devices 0 0 0 --arms bf16 bf16-fp32mixer bf16-fp32kv --out runs/acc_ablation
    python benchmarks/accuracy.py collect --out runs/acc_ablation

``collect`` writes one record (``benchmarks/records.py``) per finished run, replacing an earlier
record of the same run and precision, prints the failed and unfinished runs, and re-renders the pages
(``benchmarks/render.py``: ACCURACY.md with the notes in ``benchmarks/notes/accuracy.md``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from flare_lightning.models.precision import FP32_PARTS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `benchmarks.` imports resolve
# What the numbers of a `flare fit` run depend on besides its config: the measured paths of its record.
FIT_PATHS = ["flare_lightning/", "datamodules/"]
MODELS = {"flare": "FLARE", "transolver": "Transolver", "transformer": "Transformer", "perceiverio": "PerceiverIO"}


@dataclass(frozen=True)
class Dataset:
    """A table column: its label, the CLI overrides every model gets, and the paper's numbers."""

    label: str
    overrides: tuple[str, ...] = ()
    paper_label: str | None = None  # the paper's real-data column beside this one
    paper: dict[str, float] = field(default_factory=dict)  # rel. L2 x1e-3 read off the FLARE paper's figure (arXiv 2508.12594)


# Elasticity at the paper's counts (1000 / 100 / 200 of 2000 cells; configs/elasticity.yaml ships
# 200 training cells), in a fresh root, since existing files are read as they are.
ELASTICITY_PAPER_COUNTS = (
    "--data.init_args.root=data/elasticity_generated_2000", "--data.init_args.n_train=1000",
    "--data.init_args.n_val=100", "--data.init_args.n_test=200", "--data.init_args.gen_samples=2000",
)
DATASETS = {
    "darcy": Dataset(
        "Darcy 85x85, made here (1000/24/200)",
        paper_label="paper: Darcy, real FNO files",
        paper={"flare": 5.1, "transolver": 18.6, "transformer": 4.4},
    ),
    "elasticity": Dataset(
        "elasticity, made here (1000/100/200 of 2000 cells)",
        overrides=(*ELASTICITY_PAPER_COUNTS, "--data.init_args.gen_workers=8"),
        paper_label="paper: elasticity, real Geo-FNO files",
        paper={"flare": 3.4, "transolver": 6.4},
    ),
    "quickstart": Dataset("quickstart: Darcy 21x21, made here, 90k (FLARE) to 128k-parameter models"),
}

# Precision arms (issue 28): `launch --arms` puts each arm's runs in <out>/<arm>/ with these `flare fit`
# overrides, all from one launch (the workers share the machine's cores). `bf16-fp32<part>` keeps one
# part of FLARE in float32 under bf16 autocast (flare_lightning/models/precision.py): the ablation of
# where bf16 loses accuracy. Each arm's precision label differs, so their records sit side by side.
_BF16 = "--trainer.precision=bf16-mixed"
_TF32 = "--float32_matmul_precision=high"
ARMS: dict[str, tuple[str, ...]] = {
    "32-true": ("--trainer.precision=32-true",),
    "32-tf32": ("--trainer.precision=32-true", _TF32),
    "bf16": (_BF16,),
    **{f"bf16-fp32{part}": (_BF16, f"--model.model.init_args.fp32_parts=[{part}]") for part in FP32_PARTS},
    "bf16-fp32mixer-tf32": (_BF16, "--model.model.init_args.fp32_parts=[mixer]", _TF32),
}


def config_paths(model: str, dataset: str) -> list[Path]:
    """FLARE trains with the dataset's own config; a baseline composes configs/baselines/<model>_<dataset>.yaml
    after it (``--config`` twice)."""
    paths = [ROOT / "configs" / f"{dataset}.yaml"]
    if model != "flare":
        paths.append(ROOT / "configs" / "baselines" / f"{model}_{dataset}.yaml")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"no config for model {model!r} on dataset {dataset!r}: {path}")
    return paths


def read_config(model: str, dataset: str) -> dict:
    """The run's config files merged key by key, later files winning (as LightningCLI merges plain
    values such as the data and trainer options read here)."""

    def merge(into: dict, update: dict) -> dict:
        for key, value in update.items():
            into[key] = merge(dict(into[key]), value) if isinstance(value, dict) and isinstance(into.get(key), dict) else value
        return into

    cfg: dict = {}
    for path in config_paths(model, dataset):
        merge(cfg, yaml.safe_load(path.read_text()))
    return cfg


def rel_l2_of(folder: Path) -> float | None:
    """The run's test/rel_l2 from its test_metrics.json (None: no file, or no finite value)."""
    try:
        value = json.loads((folder / "test_metrics.json").read_text()).get("test/rel_l2")
    except (OSError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def finished(folder: Path) -> bool:
    """A run is done when its test_metrics.json holds a finite test/rel_l2."""
    return rel_l2_of(folder) is not None


@dataclass
class Run:
    """One training run of the table and where it lives."""

    model: str
    dataset: str
    seed: int
    epochs: int | None  # None: the config's own budget
    out: Path
    extra: tuple[str, ...] = ()  # the run's own `flare fit` overrides (its precision arm's), before a launch's

    @property
    def name(self) -> str:
        return f"{self.model}_{self.dataset}"

    @property
    def tag(self) -> str:
        return f"seed{self.seed}_" + ("full" if self.epochs is None else f"ep{self.epochs}")

    @property
    def folder(self) -> Path:
        return self.out / self.name / self.tag

    def batch_size(self) -> int:
        """The protocol's (global) batch: the config's, after the dataset's overrides."""
        return int(data_args(self.model, self.dataset)[1]["batch_size"])

    def command(self, fast_step: bool = False, extra: tuple[str, ...] = (), gpus: int = 1) -> list[str]:
        """The ``flare fit`` command line; resumes from ``last.ckpt`` when an earlier attempt left one.
        On ``gpus`` > 1: DDP with the config's batch split over the GPUs, so the global batch, the
        steps per epoch and the schedule stay the protocol's."""
        cmd = [
            sys.executable, "-m", "flare_lightning", "fit",
            *(f"--config={path}" for path in config_paths(self.model, self.dataset)),
            f"--seed_everything={self.seed}",
            f"--trainer.default_root_dir={self.folder}",
            f"--trainer.logger.init_args.save_dir={self.out}",
            f"--trainer.logger.init_args.name={self.name}",
            f"--trainer.logger.init_args.version={self.tag}",
            "--trainer.enable_progress_bar=false",
            *DATASETS[self.dataset].overrides,
        ]
        if self.epochs is not None:
            cmd.append(f"--trainer.max_epochs={self.epochs}")
        if fast_step:
            cmd.append("--model.fast_step=true")
        if gpus > 1:
            cmd += [f"--trainer.devices={gpus}", "--trainer.strategy=ddp",
                    f"--data.init_args.batch_size={self.batch_size() // gpus}"]
        cmd.extend(self.extra)
        cmd.extend(extra)
        last = self.folder / "checkpoints" / "last.ckpt"
        if last.is_file():
            cmd.append(f"--ckpt_path={last}")
        return cmd


# Options of a run's command that name where it runs, not what it trains.
_PLACE_OPTIONS = ("--config=", "--seed_everything=", "--trainer.default_root_dir=", "--trainer.logger.init_args.",
                  "--trainer.enable_progress_bar=", "--trainer.max_epochs=", "--ckpt_path=")


def run_settings(command: list[str], dataset: str) -> list[str]:
    """What a run's ``flare fit`` command chose beyond its model, dataset, seed and budget: the
    fast step and the extra overrides (paths, interpreter and the dataset's overrides left out)."""
    overrides = set(DATASETS[dataset].overrides)
    rest = command[command.index("fit") + 1:] if "fit" in command else command  # after: python -m flare_lightning fit
    return [a for a in rest if a not in overrides and not a.startswith(_PLACE_OPTIONS)]


def settings_conflicts(runs: list[Run], fast_step: bool, extra: tuple[str, ...], gpus: int = 1) -> list[str]:
    """Runs whose folder already holds an attempt made with other settings (say another precision):
    resuming would mix the two in one run, and a finished one would be reported for settings it
    did not use. One line each, naming the record and both settings."""
    conflicts = []
    for run in runs:
        record_path = run.folder / "launch.json"
        if not record_path.is_file():
            continue
        attempts = json.loads(record_path.read_text()).get("attempts") or []
        if not attempts:
            continue
        had = run_settings(attempts[0]["command"], run.dataset)
        asked = run_settings(run.command(fast_step, extra, gpus), run.dataset)
        if had != asked:
            state = "finished" if finished(run.folder) else "started"
            conflicts.append(f"{record_path}: {state} with {' '.join(had) or '(no options)'}; this launch asks "
                             f"{' '.join(asked) or '(no options)'}")
    return conflicts


def plan(models: list[str], datasets: list[str], seeds: list[int], epochs: int | None, out: Path,
         arms: list[str] | None = None) -> list[Run]:
    """Every (model, dataset, seed) run, dataset by dataset; with ``arms``, every run once per
    precision arm, in ``<out>/<arm>/``."""
    if arms:
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            raise ValueError(f"--arms: unknown arm(s) {unknown}; choose from {list(ARMS)}")
        partial = [a for a in arms if any("fp32_parts" in o for o in ARMS[a])]
        if partial and set(models) != {"flare"}:
            raise ValueError(f"--arms {' '.join(partial)} keep parts of FLARE in float32 (fp32_parts): "
                             f"run them with --models flare only, not {' '.join(m for m in models if m != 'flare')}")
        return [replace(run, extra=ARMS[arm]) for arm in arms for run in plan(models, datasets, seeds, epochs, out / arm)]
    for model in models:
        if model not in MODELS:
            raise ValueError(f"--models: unknown model {model!r}; choose from {sorted(MODELS)}")
    for dataset in datasets:
        if dataset not in DATASETS:
            raise ValueError(f"--datasets: unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    runs = [Run(m, d, s, epochs, out) for d in datasets for s in seeds for m in models]
    for run in runs:
        config_paths(run.model, run.dataset)  # fail now, not in a background worker
    return runs


def data_args(model: str, dataset: str) -> tuple[dict, dict]:
    """A run's config (as read) and its data init_args with the dataset's overrides applied."""
    cfg = read_config(model, dataset)
    data = dict(cfg["data"]["init_args"])
    for override in DATASETS[dataset].overrides:
        key, _, value = override.removeprefix("--data.init_args.").partition("=")
        data[key] = yaml.safe_load(value)
    return cfg, data


def estimated_steps(run: Run) -> int:
    """Optimizer steps of a run (training samples / batch x epochs): at these sizes a step costs
    about the same for every model (bound by the host), so steps stand for time."""
    cfg, data = data_args(run.model, run.dataset)
    epochs = run.epochs if run.epochs is not None else cfg["trainer"]["max_epochs"]
    return -(-int(data["n_train"]) // int(data["batch_size"])) * int(epochs)


def gpus_per_run(devices: list[str]) -> int:
    """GPUs of each worker: an entry of ``--devices`` is one GPU id or several joined by commas
    ("0,1": one DDP run on two GPUs at a time); every entry must have as many."""
    counts = {len(entry.split(",")) for entry in devices}
    if len(counts) != 1 or any(not part.strip() for entry in devices for part in entry.split(",")):
        raise SystemExit(f"--devices {' '.join(devices)}: give each worker the same number of GPUs, "
                         "as ids joined by commas (e.g. --devices 0,1 2,3)")
    return counts.pop()


def check_batch_split(runs: list[Run], gpus: int) -> None:
    """Every run's batch must split evenly over its GPUs (DDP keeps the protocol's global batch)."""
    for run in runs:
        batch = run.batch_size()
        if batch % gpus:
            raise SystemExit(f"{config_paths(run.model, run.dataset)[-1]}: data.init_args.batch_size {batch} does not split "
                             f"over {gpus} GPUs per run; run {run.name} on one GPU per worker")


def assign(runs: list[Run], devices: list[str]) -> dict[int, list[Run]]:
    """Spread the runs over the worker slots (one per entry of ``devices``), longest first, each
    to the slot with the fewest estimated steps so far, so the slots finish at about the same time."""
    slots: dict[int, list[Run]] = {i: [] for i in range(len(devices))}
    load = [0] * len(devices)
    for run in sorted(runs, key=estimated_steps, reverse=True):
        slot = min(range(len(devices)), key=lambda i: load[i])
        slots[slot].append(run)
        load[slot] += estimated_steps(run)
    return slots


def git_commit() -> str:
    """The code's commit as runs record it (``flare_lightning.runs.provenance.commit``: ``$FLARE_COMMIT``
    where set, ``-dirty`` with uncommitted changes), the hash shortened to 7 characters."""
    from flare_lightning.runs.provenance import commit

    head, dash, dirty = commit().partition("-")
    return (head[:7] if len(head) == 40 else head) + dash + dirty


def card_name(env: dict[str, str]) -> str:
    """``torch.cuda.get_device_name`` of the GPU a worker's runs see (in a child, so no CUDA context stays)."""
    code = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def write_json(path: Path, obj: object) -> None:
    """``obj`` as indented JSON, written to a temporary file and renamed into place."""
    from flare_lightning.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def python_path() -> str:
    """The repo first, then whatever PYTHONPATH already holds (e.g. wheels a GPU machine adds)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def prepare_data(datasets: list[str], extra: tuple[str, ...]) -> None:
    """Make and cache every dataset once, before workers start side by side on it."""
    from unittest import mock

    from flare_lightning.cli import make_cli

    for dataset in datasets:
        print(f"preparing {dataset} ...", flush=True)
        with mock.patch("sys.argv", ["flare"]):
            cli = make_cli([f"--config={config_paths('flare', dataset)[0]}", *DATASETS[dataset].overrides, *extra], run=False)
        dm = cli.datamodule
        dm.prepare_data()
        dm.setup("fit")
        dm.setup("test")


def worker(queue_file: Path) -> None:
    """Run a queue of runs one after another (skipping finished ones), recording each attempt."""
    queue = json.loads(queue_file.read_text())
    gpus = queue.get("gpus", 1)
    card = card_name(dict(os.environ))
    card = f"{gpus} x {card}" if gpus > 1 else card
    for item in queue["runs"]:
        run = Run(item["model"], item["dataset"], item["seed"], item["epochs"], Path(item["out"]), tuple(item.get("extra", ())))
        if finished(run.folder):
            print(f"{run.name}/{run.tag}: finished before, skipped", flush=True)
            continue
        cmd = run.command(queue["fast_step"], tuple(queue["extra"]), gpus)
        record_path = run.folder / "launch.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {"attempts": []}
        for earlier in record["attempts"]:  # records from before attempts kept their own commit and card
            earlier.setdefault("commit", record.get("commit"))
            earlier.setdefault("card", record.get("card"))
        record.update(model=run.model, dataset=run.dataset, seed=run.seed, epochs=run.epochs, card=card,
                      commit=queue["commit"], cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        log = Path(item.get("log_dir", queue["log_dir"])) / f"{run.name}_{run.tag}.log"  # an arm's runs log in its folder
        print(f"{run.name}/{run.tag}: {' '.join(cmd)}\n  log: {log}", flush=True)
        start = time.time()
        # Recorded before the run starts, so an attempt whose machine went away still counts
        # (its end and wall time stay None: the table then marks the run's time as a lower bound).
        record["attempts"].append({"start": start, "end": None, "wall_s": None, "rc": None, "command": cmd,
                                   "commit": queue["commit"], "card": card})
        write_json(record_path, record)
        rc = run_attempt(cmd, log, len(record["attempts"]), record, record_path)
        end = time.time()
        record["attempts"][-1].update(end=end, wall_s=end - start, rc=rc)
        write_json(record_path, record)
        print(f"{run.name}/{run.tag}: exit {rc} after {end - start:.0f} s", flush=True)


HEARTBEAT_S = 60.0  # how often a running attempt records ``last_seen`` in launch.json
ATTEMPT_MARK = "==> accuracy.py attempt "  # the line that opens each attempt in a run's log


def run_attempt(cmd: list[str], log: Path, number: int, record: dict, record_path: Path) -> int:
    """Run one attempt, appending to the run's log after a marker line; every ``HEARTBEAT_S``
    store the time in the attempt's ``last_seen``, so an attempt whose machine goes away
    (and never records its end) still shows how long it at least ran."""
    with open(log, "a") as fh:
        fh.write(f"{ATTEMPT_MARK}{number} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        while True:
            try:
                return proc.wait(timeout=HEARTBEAT_S)
            except subprocess.TimeoutExpired:
                record["attempts"][-1]["last_seen"] = time.time()
                write_json(record_path, record)


EPOCH_LINE = re.compile(r"^epoch \d+/\d+ .*\((\d+(?:\.\d+)?) s[,)]")  # EpochSummary's line


def epoch_seconds_per_attempt(log_text: str, attempts: int) -> list[float] | None:
    """The summed epoch times (EpochSummary's ``(t s`` lines) of each attempt in a run's log, or
    None when the log's attempts cannot be told apart. Attempts are separated by the worker's
    marker lines; a log whose first attempt predates the markers has its text before the first
    marker as that attempt."""
    segments = re.split(rf"^{re.escape(ATTEMPT_MARK)}.*$", log_text, flags=re.M)
    if not segments[0].strip():
        segments = segments[1:]
    if len(segments) != attempts:
        return None
    return [sum(float(m.group(1)) for line in seg.splitlines() if (m := EPOCH_LINE.match(line))) for seg in segments]


def worker_env(devices: list[str], slot: int, cpus: int | None = None) -> dict[str, str]:
    """Environment of worker ``slot``: its GPUs, the repo on PYTHONPATH, and each process's share of
    the CPU cores as OpenMP threads (unless set; a DDP worker runs one process per GPU): side by
    side with a full thread pool each, the runs' spinning threads starved each other's host loop
    (40-180 ms steps instead of 3-7 ms)."""
    processes = sum(len(entry.split(",")) for entry in devices)
    threads = max(1, (cpus or os.cpu_count() or 1) // max(1, processes))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": devices[slot], "PYTHONPATH": python_path()}
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def launch(args: argparse.Namespace) -> list[subprocess.Popen]:
    """Print the plan; unless ``--dry-run``, make the data and start the background workers."""
    try:
        runs = plan(args.models, args.datasets, args.seeds, args.epochs, args.out.resolve(), args.arms)
    except ValueError as err:
        raise SystemExit(f"accuracy.py launch: {err}") from None
    gpus = gpus_per_run(args.devices)
    check_batch_split(runs, gpus)
    slots = assign(runs, args.devices)
    extra = tuple(args.extra)
    conflicts = settings_conflicts(runs, args.fast_step, extra, gpus)
    if conflicts:
        raise SystemExit("accuracy.py launch: runs already made with other settings (launch them with the "
                         "same options, or give --out a new folder):\n  " + "\n  ".join(conflicts))
    for slot, queue in slots.items():
        steps = sum(estimated_steps(r) for r in queue)
        print(f"# worker {slot}: CUDA_VISIBLE_DEVICES={args.devices[slot]}, {steps} optimizer steps in all")
        for run in queue:
            state = "done, skipped" if finished(run.folder) else "resume" if (run.folder / "checkpoints/last.ckpt").is_file() else "new"
            print(f"#   {run.folder.relative_to(args.out.resolve())} [{state}], {estimated_steps(run)} steps")
            print(" ".join(run.command(args.fast_step, extra, gpus)))
    if args.dry_run:
        return []
    prepare_data(sorted({r.dataset for r in runs}), extra)
    log_dir = args.out.resolve() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    commit, procs = git_commit(), []
    for slot, queue in slots.items():
        if not queue:
            continue
        queue_file = log_dir / f"queue_{slot}.json"
        for run in queue:
            (run.out / "logs").mkdir(parents=True, exist_ok=True)
        write_json(queue_file, {
            "runs": [{**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(r).items()},
                      "log_dir": str(r.out / "logs")} for r in queue],
            "fast_step": args.fast_step, "extra": list(extra), "gpus": gpus, "commit": commit, "log_dir": str(log_dir),
        })
        env = worker_env(args.devices, slot)
        with open(log_dir / f"worker_{slot}.log", "a") as fh:
            procs.append(subprocess.Popen([sys.executable, __file__, "worker", str(queue_file)], cwd=ROOT, env=env,
                                          stdout=fh, stderr=subprocess.STDOUT, start_new_session=True))
        print(f"worker {slot} (pid {procs[-1].pid}, CUDA_VISIBLE_DEVICES={args.devices[slot]}): log {log_dir}/worker_{slot}.log")
    return procs


# --- the table ----------------------------------------------------------------------------------
TAG = re.compile(r"seed(\d+)_(full|ep(\d+))")


@dataclass
class Result:
    """One finished run as the table shows it."""

    model: str
    dataset: str
    seed: int
    budget: str
    rel_l2: float
    wall_s: float | None
    attempts: int
    card: str
    commit: str
    folder: Path
    precision: str = "32-true"
    untimed_attempts: int = 0  # attempts that never recorded their end (the machine went away)
    commits: list[str] = field(default_factory=list)  # each attempt's, in order
    date: str | None = None  # when the last attempt ended (UTC, ISO 8601)
    command: list[str] = field(default_factory=list)  # the last attempt's
    versions: dict = field(default_factory=dict)  # of the packages the test ran with

    def full_protocol_s(self) -> float | None:
        """Wall time of the config's full budget at this run's pace (steps scale the time)."""
        if self.wall_s is None or self.budget == "full":
            return self.wall_s
        steps = estimated_steps(Run(self.model, self.dataset, self.seed, int(self.budget[2:]), self.folder))
        return self.wall_s * estimated_steps(Run(self.model, self.dataset, self.seed, None, self.folder)) / steps


def run_roots(out: Path) -> list[Path]:
    """``out`` and its precision-arm folders (``launch --arms``: ``<out>/<arm>/``), each holding runs."""
    return [out, *(out / arm for arm in ARMS if (out / arm).is_dir())]


def run_folders(out: Path):
    """``(folder, model, dataset, seed, budget, launch record)`` of every run folder under ``out``
    (``<model>_<dataset>/seed<S>_<budget>/``) of a known model and dataset."""
    for folder in sorted(p for p in out.glob("*_*/seed*") if p.is_dir()):
        model, _, dataset = folder.parent.name.partition("_")
        tag = TAG.fullmatch(folder.name)
        if model in MODELS and dataset in DATASETS and tag is not None:
            record_path = folder / "launch.json"
            record = json.loads(record_path.read_text()) if record_path.is_file() else {}
            yield folder, model, dataset, int(tag.group(1)), tag.group(2), record


def timed_seconds(attempts: list[dict], epoch_s: list[float] | None = None) -> float | None:
    """Wall time summed over the attempts: the recorded ``wall_s`` of those that ended; for one that
    never recorded its end (its machine went away), the time to its last heartbeat, else the sum of
    its epoch times from the log (``epoch_s``, per attempt): both lower bounds. None: nothing known."""
    known = []
    for i, a in enumerate(attempts):
        if a.get("wall_s") is not None:
            known.append(a["wall_s"])
        elif a.get("last_seen") is not None and a.get("start") is not None:
            known.append(a["last_seen"] - a["start"])
        elif epoch_s is not None and epoch_s[i] > 0:
            known.append(epoch_s[i])
    return sum(known) if known else None


def attempt_values(record: dict, key: str) -> list[str]:
    """The attempts' distinct ``card`` or ``commit`` values in order (more than one when a resumed
    run changed machine or code)."""
    values = [a.get(key) or record.get(key) for a in record.get("attempts", [])] or [record.get(key)]
    return list(dict.fromkeys(v or "unknown" for v in values))


def per_attempt(record: dict, key: str) -> str:
    """A run's ``card`` or ``commit`` as a table shows it: "db698da, then f478dfd"."""
    return ", then ".join(attempt_values(record, key))


def finish_date(attempts: list[dict]) -> str | None:
    """When the last attempt ended (else was last seen, else started), UTC ISO 8601; None: never."""
    times = [t for a in attempts for t in (a.get("end") or a.get("last_seen") or a.get("start"),) if t is not None]
    if not times:
        return None
    return datetime.datetime.fromtimestamp(times[-1], datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def tested_versions(folder: Path) -> dict:
    """The package versions test_metrics.json records (``environment.versions``), else none."""
    try:
        return json.loads((folder / "test_metrics.json").read_text()).get("environment", {}).get("versions") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def run_log(out: Path, folder: Path) -> Path:
    """The log a worker appends every attempt of the run in ``folder`` to."""
    return out / "logs" / f"{folder.parent.name}_{folder.name}.log"


def run_facts(out: Path, folder: Path, record: dict) -> dict:
    """What every table says of a run folder: ``wall_s``, ``card``, ``commit`` and ``precision``
    from its launch record; the run's log is read only for an attempt with neither an end nor a
    heartbeat."""
    attempts = record.get("attempts", [])
    epoch_s = None
    if any(a.get("wall_s") is None and a.get("last_seen") is None for a in attempts):
        log = run_log(out, folder)
        if log.is_file():
            epoch_s = epoch_seconds_per_attempt(log.read_text(errors="replace"), len(attempts))
    return {"wall_s": timed_seconds(attempts, epoch_s), "card": per_attempt(record, "card"),
            "commit": per_attempt(record, "commit"),
            "precision": run_precision(attempts[-1]["command"]) if attempts else "unknown"}


def collect(out: Path) -> list[Result]:
    """Every finished run under ``out`` (``<model>_<dataset>/seed<S>_<budget>/test_metrics.json``)."""
    results = []
    for folder, model, dataset, seed, budget, record in run_folders(out):
        rel = rel_l2_of(folder)
        if rel is None:
            continue
        attempts = record.get("attempts", [])
        untimed = sum(1 for a in attempts if a.get("wall_s") is None)
        commits = [c for c in attempt_values(record, "commit") if c != "unknown"]
        results.append(Result(model, dataset, seed, budget, rel, attempts=len(attempts), folder=folder,
                              untimed_attempts=untimed, commits=commits, date=finish_date(attempts),
                              command=attempts[-1]["command"] if attempts else [], versions=tested_versions(folder),
                              **run_facts(out, folder, record)))
    return results


DIRTY = ("+dirty", "-dirty")  # how git_commit and flare_lightning.runs.provenance mark a changed tree


def run_record(result: Result, out: Path) -> dict:
    """The record of a finished run (``benchmarks/records.py``). Its commit is the first attempt's,
    so a change since any attempt marks it stale; the row keeps every attempt's."""
    from benchmarks.records import make_record

    commits = [c.removesuffix("+dirty").removesuffix("-dirty") for c in result.commits]
    row = {"model": result.model, "dataset": result.dataset, "seed": result.seed, "budget": result.budget,
           "precision": result.precision, "rel_l2": result.rel_l2, "wall_s": result.wall_s, "attempts": result.attempts,
           "untimed_attempts": result.untimed_attempts, "full_budget_s": result.full_protocol_s(), "commits": commits,
           "folder": result.folder.relative_to(out).as_posix()}
    configs = [path.relative_to(ROOT).as_posix() for path in config_paths(result.model, result.dataset)]
    return make_record("accuracy", [row], paths=[*FIT_PATHS, *configs], card=result.card, host=None,
                       command=shlex.join(result.command) if result.command else "unknown (no launch record)",
                       date=result.date, versions=result.versions,
                       commit=(commits[0] if commits else None, any(c.endswith(DIRTY) for c in result.commits)))


def precision_slug(precision: str) -> str:
    """A run's precision label as a file-name part: ``bf16-mixed, fp32 eval`` -> ``bf16-mixed-fp32-eval``."""
    return re.sub(r"[^a-z0-9]+", "-", precision.lower()).strip("-")


def write_run_records(results: list[Result], out: Path, records: Path) -> list[Path]:
    """One record per finished run in ``records/accuracy/<model>_<dataset>_<tag>_<precision>.json``
    (arms of a precision ablation share seeds and tags), replacing the record an earlier collect
    wrote for the same run."""
    from flare_lightning.atomic import atomic_write_text

    paths = []
    for result in results:
        name = f"{result.model}_{result.dataset}_{result.folder.name}_{precision_slug(result.precision)}.json"
        path = records / "accuracy" / name
        atomic_write_text(path, json.dumps(run_record(result, out), indent=1, allow_nan=False) + "\n")
        paths.append(path)
    return paths


@dataclass
class Failure:
    """A run whose last attempt exited with an error and left no test metrics."""

    model: str
    dataset: str
    seed: int
    budget: str
    rc: int
    reason: str
    wall_s: float | None
    card: str
    commit: str
    folder: Path
    precision: str


FAILURE_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.*)$")  # [module.]SomeError: message


def failures(out: Path) -> list[Failure]:
    """Runs under ``out`` that ended in an error (their last attempt's exit code is not 0) and have
    no test metrics; the reason is the last ``...Error: message`` line of the run's log."""
    found = []
    for folder, model, dataset, seed, budget, record in run_folders(out):
        attempts = record.get("attempts", [])
        if finished(folder) or not attempts or attempts[-1].get("rc") in (None, 0):
            continue
        reason = "no error line in the log"
        log = run_log(out, folder)
        if log.is_file():
            for line in log.read_text(errors="replace").splitlines():
                match = FAILURE_LINE.match(line.strip())
                if match:
                    reason = f"{match.group(1)}: {match.group(2)}"
        found.append(Failure(model, dataset, seed, budget, int(attempts[-1]["rc"]), reason, folder=folder,
                             **run_facts(out, folder, record)))
    return found


@dataclass
class InProgress:
    """A run whose last attempt has not recorded an end (still going, or its machine went away
    before it finished): how far its checkpointed training got, to resume with ``launch``."""

    model: str
    dataset: str
    seed: int
    budget: str
    epochs_done: int
    max_epochs: int | None
    best_val: float | None
    wall_s: float | None
    card: str
    commit: str
    folder: Path
    precision: str


def training_progress(folder: Path) -> tuple[int, float | None]:
    """(epochs with a logged validation, best val/rel_l2 so far) from the run's metrics.csv."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return 0, None
    epochs, vals = set(), []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val/rel_l2"):
                epochs.add(int(row["epoch"]))
                vals.append(float(row["val/rel_l2"]))
    return len(epochs), (min(vals) if vals else None)


def in_progress(out: Path) -> list[InProgress]:
    """Runs under ``out`` without test metrics whose last attempt recorded no end."""
    found = []
    for folder, model, dataset, seed, budget, record in run_folders(out):
        attempts = record.get("attempts", [])
        if finished(folder) or not attempts or attempts[-1].get("rc") is not None:
            continue
        done, best = training_progress(folder)
        max_epochs = record.get("epochs") or read_config(model, dataset)["trainer"]["max_epochs"]
        found.append(InProgress(model, dataset, seed, budget, done, max_epochs, best, folder=folder,
                                **run_facts(out, folder, record)))
    return found


def run_precision(command: list[str]) -> str:
    """The trainer precision a ``flare fit`` command line asked for (the configs' default: 32-true),
    with ", fp32 eval" where ``--model.eval_fp32 true`` evaluates a mixed-precision run in float32
    and ", TF32 matmuls" where ``--float32_matmul_precision high`` (or medium) lowers float32 matmuls;
    ", fp32 mixer+residual" where ``--model.model.init_args.fp32_parts`` keeps parts in float32."""
    value, eval_fp32, matmul, parts = "32-true", False, "highest", ""

    def option(name: str, i: int, arg: str) -> str | None:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        return command[i + 1] if arg == f"--{name}" and i + 1 < len(command) else None

    for i, arg in enumerate(command):
        value = option("trainer.precision", i, arg) or value
        flag = option("model.eval_fp32", i, arg)
        if flag is not None:
            eval_fp32 = flag.lower() == "true"
        matmul = option("float32_matmul_precision", i, arg) or matmul
        named = option("model.model.init_args.fp32_parts", i, arg)
        parts = "+".join(sorted(re.findall(r"\w+", named))) if named is not None else parts
    label = f"{value}, fp32 eval" if eval_fp32 and not value.startswith("32") else value
    if parts and not value.startswith("32"):
        label = f"{label}, fp32 {parts}"
    lowered = {"high": "TF32 matmuls", "medium": "bf16 float32 matmuls"}.get(matmul)
    return f"{label}, {lowered}" if lowered else label


def hours(seconds: float | None) -> str:
    """A wall time as the accuracy tables write it: minutes under an hour, hours above."""
    if seconds is None:
        return "time unknown"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def status(out: Path, failed: list[Failure], running: list[InProgress]) -> str:
    """The runs that have no record yet: failed ones with their reason, unfinished ones with their
    progress (what a campaign needs to know; the pages show finished runs only)."""
    lines = []
    if failed:
        lines += ["Failed runs (the reason is the last error line of the run's log under `logs/`):",
                  "| model | dataset | budget | seed | precision | exit | reason | wall time | card | commit | folder |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for f in failed:
            reason = f.reason.replace("|", "/")
            lines.append(f"| {MODELS[f.model]} | {f.dataset} | {f.budget} | {f.seed} | {f.precision} | {f.rc} | {reason} | "
                         f"{hours(f.wall_s)} | {f.card} | {f.commit} | `{f.folder.relative_to(out)}` |")
    if running:
        lines += ["Runs in progress (their last attempt recorded no end; `launch` with the same arguments resumes "
                  "them from `last.ckpt`; validation error: the best so far):",
                  "| model | dataset | budget | seed | precision | epochs done | best val. rel. L2 so far | time so far | card | commit | folder |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in running:
            best = f"{r.best_val:.4e}" if r.best_val is not None else "none yet"
            lines.append(f"| {MODELS[r.model]} | {r.dataset} | {r.budget} | {r.seed} | {r.precision} | "
                         f"{r.epochs_done}/{r.max_epochs} | {best} | {hours(r.wall_s)} (at least) | {r.card} | "
                         f"{r.commit} | `{r.folder.relative_to(out)}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    lp = sub.add_parser("launch", help="start the runs in the background (or print them with --dry-run)")
    lp.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    lp.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    lp.add_argument("--seeds", nargs="+", type=int, default=[0])
    lp.add_argument("--epochs", type=int, default=None, help="reduced epoch budget for every run (default: the configs')")
    lp.add_argument("--devices", nargs="+", default=["0"],
                    help="GPU id per worker; repeat an id for several workers on it; ids joined by commas (0,1) "
                         "make each run a DDP run on those GPUs at the protocol's global batch")
    lp.add_argument("--fast-step", action="store_true", help="pass --model.fast_step=true (issue 15)")
    lp.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                    help=f"precision arms, each run once per arm in <out>/<arm>/ (choices: {', '.join(ARMS)})")
    lp.add_argument("--dry-run", action="store_true", help="print the plan and the commands, start nothing")
    lp.add_argument("--wait", action="store_true", help="wait for the workers to finish, then collect")
    lp.add_argument("extra", nargs="*", help="more `flare fit` overrides for every run, after --")
    cp = sub.add_parser("collect", help="record the finished runs and re-render the pages")
    for sp in (lp, cp):  # where the runs are, where their records go, and the pages rendered from them
        sp.add_argument("--out", type=Path, default=ROOT / "runs" / "accuracy", help="folder of the runs")
        sp.add_argument("--records", type=Path, default=ROOT / "benchmarks" / "records",
                        help="records folder (the runs' go to its accuracy/)")
        sp.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "ACCURACY.md", help="the accuracy page")
        sp.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md", help="the results page")
        sp.add_argument("--readme", type=lambda v: Path(v) if v else None, default=ROOT / "README.md",
                        help="the README whose headline table is re-rendered ('' for none)")
        sp.add_argument("--docs", type=lambda v: Path(v) if v else None, default=ROOT / "docs",
                        help="the folder of the docs pages whose tables are re-rendered ('' for none)")
    wp = sub.add_parser("worker", help=argparse.SUPPRESS)
    wp.add_argument("queue", type=Path)
    args = p.parse_args(argv)
    if args.command == "worker":
        worker(args.queue)
        return
    if args.command == "launch":
        procs = launch(args)
        if not (args.wait and procs):
            return
        for proc in procs:
            proc.wait()
    from benchmarks.render import Pages, render_pages, write_pages

    results, failed, running = [], [], []
    for out in run_roots(args.out.resolve()):
        found, lost, going = collect(out), failures(out), in_progress(out)
        for path in write_run_records(found, out, args.records):
            print(f"record: {path}")
        if lost or going:
            print(status(out, lost, going))
        results, failed, running = results + found, failed + lost, running + going
    pages = Pages(results=args.results, accuracy=args.output, readme=args.readme, docs=args.docs)
    for path in write_pages(render_pages(pages, records=args.records)):
        print(f"wrote {path}")
    print(f"{len(results)} finished runs, {len(failed)} failed, {len(running)} in progress")


if __name__ == "__main__":
    main()
