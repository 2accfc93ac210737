"""The accuracy runs: the models, data sets and precision arms of the table, each run's folder and
``flare fit`` command, and the plan of a launch over its workers (``benchmarks/accuracy.py`` is the
command line; ``accuracy_launch`` starts the runs, ``accuracy_collect`` reads them back)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from flare_lightning.models.precision import FP32_PARTS

ROOT = Path(__file__).resolve().parents[1]

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
    # fp16 autocast with Lightning's loss scale (kept on the GPU under --fast-step): 11 significant bits
    # where bf16 keeps 8, at bf16's speed (the authors' 1M DrivAerML runs train in fp16)
    "fp16": ("--trainer.precision=16-mixed",),
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
