"""Where one flare command writes: decided once, from the parsed config, before anything is
built; the CLI, the CSV logger, the run records and the callbacks all read this one object.

- ``fit``: a new ``<save_dir>/<name>/version_N`` (under SLURM ``version_<job id>``, then
  ``version_<job id>.1``... for later fits of the job), or the run whose ``last.ckpt`` it
  resumes, or (a requeued SLURM job) the folder that fit used before the requeue, resumed
  from its newest checkpoint. A fit from any other checkpoint is a new run.
- ``validate``/``test``/``predict``: a new ``<run>/<command>/version_N`` beside the
  evaluated checkpoint's run (``<save_dir>/<name>/<command>/version_N`` for a checkpoint
  outside a run): a later evaluation never replaces a fit's records.
- ``--trainer.fast_dev_run``: nothing is written.

Planning only reads the disk, the same on every process of a distributed run; ``claim``
(rank 0, once all processes have started) creates or takes the folder, locks it for the
command's lifetime and tells the other ranks.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flare_lightning.runs.checkpoint_io import CheckpointError, load_checkpoint
from flare_lightning.runs.lock import LOCK, RunInUseError, hold, in_use, release
from flare_lightning.runs.discovery import LAST, continues_run, resolve_checkpoint, run_of_checkpoint
from flare_lightning.runs.slurm import CLAIMS, SlurmJob, add_claim, requeued_folder

CSV_CLASS = "lightning.pytorch.loggers.CSVLogger"
# What makes a folder a run's: a new run never starts in a folder holding one of these.
RECORDS = ("config.yaml", "hparams.yaml", "metrics.csv", "run_info.json", "test_metrics.json", "checkpoints")
BOOKKEEPING = (LOCK, CLAIMS)
TEST_RECORD = "test_metrics.json"
# Loggers whose run name and folder follow the CSV logger when the config leaves them unset.
FOLLOWERS = {
    "lightning.pytorch.loggers.WandbLogger": ("name", "save_dir"),
    "lightning.pytorch.loggers.TensorBoardLogger": ("name", "save_dir"),
    "lightning.pytorch.loggers.MLFlowLogger": ("run_name", "save_dir"),
}
UNSET = (None, ".", "", "lightning_logs", "./mlruns")
SAFE_PART = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9_.+=-]*")
Kind = Literal["new", "continue", "evaluate", "debug"]


class RunFolderError(ValueError):
    """The configured run folder is unsafe, or already holds another run."""


@dataclass
class RunFolder:
    """One command's folder.

    Args:
        command: ``fit``, ``validate``, ``test`` or ``predict``.
        kind: ``new`` (a fit's fresh folder), ``continue`` (a fit resuming its own run),
            ``evaluate`` (a new folder inside the evaluated run) or ``debug`` (writes nothing).
        planned: the folder chosen at planning (``claim`` may move a new one to the next free
            name when another command took it meanwhile).
        checkpoint: the checkpoint the command restores (resolved from ``best``/``last``).
        fixed_name: the config names the folder (its ``version``) or SLURM does: never renamed.
        slurm: the SLURM job of a fit, recorded in the folder's ``slurm_jobs.json``.
        slot: this fit's slot among the job's fits (``flare_lightning.runs.slurm``).
    """

    command: str
    kind: Kind
    planned: Path
    checkpoint: Path | None = None
    fixed_name: bool = False
    slurm: SlurmJob | None = None
    slot: int = 0
    path: Path | None = None  # set by ``claim``: the folder every rank writes into
    _lock: int | None = field(default=None, init=False, repr=False)
    _created: bool = field(default=False, init=False, repr=False)

    @property
    def writes(self) -> bool:
        return self.kind != "debug"

    @property
    def current(self) -> Path:
        """The folder in use: claimed, else planned (before ``claim`` or under fast_dev_run)."""
        return self.path or self.planned

    def claim(self, rank_zero: bool, broadcast: Callable[[str], str]) -> Path:
        """Create (new, evaluate) or take (continue) the folder and lock it on rank 0, then give
        every rank rank 0's path. Idempotent: a second call returns the folder in use."""
        if self.path is not None or not self.writes:
            return self.current
        chosen = str(self._take()) if rank_zero else ""
        self.path = Path(broadcast(chosen))
        return self.path

    def _take(self) -> Path:
        folder = self.planned
        if self.kind == "continue":
            folder.mkdir(parents=True, exist_ok=True)  # a requeued job's folder may hold only its claim
        else:
            while True:
                try:
                    folder.mkdir(parents=True, exist_ok=self.fixed_name)
                    break
                except FileExistsError:
                    folder = next_version(folder.parent)  # another command took it since planning
            if self.fixed_name:
                refuse_records(folder)
            self._created = not holds_records(folder)
        self._lock = hold(folder)
        if self.slurm is not None:
            add_claim(folder, self.slurm.entry(self.slot))
        return folder

    def release(self) -> None:
        """Unlock; a folder this command created and left without records is removed."""
        if self.path is None:
            return
        release(self.path, self._lock)
        self._lock = None
        if self._created and all(p.name in BOOKKEEPING for p in self.path.iterdir()):
            shutil.rmtree(self.path)
            if self.kind == "evaluate" and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()


def plan_run_folder(command: str, config: Any, env: Mapping[str, str] | None = None) -> RunFolder:
    """Decide where ``command`` writes, from its parsed config (``trainer.logger``,
    ``trainer.default_root_dir``, ``trainer.fast_dev_run``, ``ckpt_path``), reading the disk only."""
    trainer = config.get("trainer") or {}
    save_dir, name, version = csv_location(trainer)
    base = Path(save_dir) / name
    asked = config.get("ckpt_path")
    # Only the first process checks whether a run is in use: the others start (DDP, srun) while
    # the previous command's first process may still be ending, and rank 0 refuses for all.
    first = launched_first(os.environ if env is None else env)
    if trainer.get("fast_dev_run"):
        ckpt = resolve_checkpoint(asked, save_dir, name, first)
        return RunFolder(command, "debug", base / "fast_dev_run", Path(ckpt) if ckpt else None)
    if command != "fit":
        ckpt = Path(resolve_checkpoint(asked, save_dir, name, first))
        home = run_of_checkpoint(ckpt) or base
        return RunFolder(command, "evaluate", next_version(home / command), ckpt)
    job = SlurmJob.from_env(env)
    if job is not None:
        folder, slot = requeued_folder(job, base)
        if folder is not None:  # a requeued fit: continue where it stopped
            return RunFolder(command, "continue", folder, newest_checkpoint(folder), True, job, slot)
    else:
        slot = 0
    ckpt = resolve_checkpoint(asked, save_dir, name, first)
    run = continues_run(ckpt, save_dir, name) if ckpt else None
    if run is not None:
        if first and in_use(run):
            raise RunInUseError(f"ckpt_path {ckpt}: its run {run} is in use by another flare command (still training?)")
        return RunFolder(command, "continue", run, Path(ckpt), True, job, slot)
    ckpt = Path(ckpt) if ckpt else None
    if version is not None:
        folder = base / (version if isinstance(version, str) else f"version_{version}")
        refuse_records(folder)
        return RunFolder(command, "new", folder, ckpt, True, job, slot)
    if job is not None:
        return RunFolder(command, "new", free_job_folder(base, job), ckpt, True, job, slot)
    return RunFolder(command, "new", next_version(base), ckpt)


def launched_first(env: Mapping[str, str]) -> bool:
    """Whether this process is the first (global rank 0) of its launch, from the variables the
    launchers set (torchrun ``RANK``, SLURM ``SLURM_PROCID``, Lightning's ``NODE_RANK`` and
    ``LOCAL_RANK``); True for a plain single process."""
    if "RANK" in env:
        return env["RANK"] == "0"
    if "SLURM_PROCID" in env:
        return env["SLURM_PROCID"] == "0"
    return env.get("NODE_RANK", "0") == "0" and env.get("LOCAL_RANK", "0") == "0"


def csv_location(trainer: Any) -> tuple[str, str, int | str | None]:
    """(save_dir, name, version) of the config's CSV logger, checked to stay inside
    ``save_dir``; without one, Lightning's ``<default_root_dir>/lightning_logs``."""
    csv = csv_logger_config(trainer.get("logger"))
    if csv is None:
        return str(trainer.get("default_root_dir") or "."), "lightning_logs", None
    args = csv.get("init_args") or {}
    save_dir, name, version = args.get("save_dir"), args.get("name"), args.get("version")
    key = "trainer.logger.init_args"
    if not isinstance(save_dir, str) or not save_dir.strip():
        raise RunFolderError(f"{key}.save_dir must name a folder, got {save_dir!r}")
    name = name or ""
    parts = Path(name).parts
    if Path(name).is_absolute() or any(not SAFE_PART.fullmatch(p) for p in parts):
        raise RunFolderError(f"{key}.name={name!r}: expected a relative name of plain parts (letters, digits, "
                             "'_', '-', '.', no '..'), so that runs stay inside save_dir")
    if version is not None and (isinstance(version, bool) or (isinstance(version, int) and version < 0)
                                or (isinstance(version, str) and not SAFE_PART.fullmatch(version))):
        raise RunFolderError(f"{key}.version={version!r}: expected a number >= 0 or a plain folder name")
    return str(Path(save_dir).expanduser()), name, version


def csv_logger_config(logger_cfg: Any) -> Any:
    """The ``{class_path, init_args}`` entry of the CSV logger in a parsed ``trainer.logger``."""
    candidates = logger_cfg if isinstance(logger_cfg, list) else [logger_cfg]
    return next((lg for lg in candidates if getattr(lg, "class_path", None) == CSV_CLASS), None)


def name_loggers_like_csv(logger_cfg: Any) -> None:
    """Give loggers without a run name or folder those of the CSV logger, in place (an added
    ``configs/logger/wandb.yaml`` takes the dataset config's run name)."""
    csv = csv_logger_config(logger_cfg)
    if csv is None or not isinstance(logger_cfg, list):
        return
    for logger in logger_cfg:
        keys = FOLLOWERS.get(getattr(logger, "class_path", None))
        if keys is None or logger.get("init_args") is None:
            continue
        for key, source in zip(keys, ("name", "save_dir")):
            if logger.init_args.get(key) in UNSET:
                logger.init_args[key] = csv.init_args.get(source)


def holds_records(folder: Path) -> bool:
    return any((folder / name).exists() for name in RECORDS)


def refuse_records(folder: Path) -> None:
    """Refuse a new run in a folder holding a run's results (checkpoints, a test record); a run
    killed before its first checkpoint left nothing to continue, and is started over."""
    results = [*folder.glob("checkpoints/*.ckpt"), *folder.glob("hpc_ckpt_*.ckpt"), *folder.glob(TEST_RECORD)]
    if results:
        raise RunFolderError(
            f"{folder} already holds a run ({', '.join(str(p.relative_to(folder)) for p in sorted(results))}); a new "
            f"run never writes over one. Continue it with --ckpt_path {folder / 'checkpoints' / LAST}, or choose "
            "another trainer.logger.init_args.version (or leave it unset)"
        )


def next_version(base: Path) -> Path:
    """``base/version_<N+1>`` for the largest plain ``version_N`` under ``base`` (``version_0`` first)."""
    numbers = [int(p.name[8:]) for p in base.glob("version_*") if p.name[8:].isdigit()] if base.is_dir() else []
    return base / f"version_{max(numbers, default=-1) + 1}"


def free_job_folder(base: Path, job: SlurmJob) -> Path:
    """The first of ``version_<job>``, ``version_<job>.1``, ... that does not exist."""
    folder, n = base / job.folder_name, 0
    while folder.exists():
        n += 1
        folder = base / f"{job.folder_name}.{n}"
    return folder


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a requeued fit resumes: of the folder's pre-emption checkpoints
    (``hpc_ckpt_N.ckpt``) and ``checkpoints/last.ckpt``, the one with the largest global
    step (the pre-emption one on a tie); unreadable files are skipped with a warning."""
    best: tuple[int, int, Path] | None = None
    for rank, path in [(1, p) for p in folder.glob("hpc_ckpt_*.ckpt")] + [(0, folder / "checkpoints" / LAST)]:
        if not path.is_file():
            continue
        try:
            step = int(load_checkpoint(path, mmap=True)["global_step"])
        except (CheckpointError, OSError, ValueError) as err:
            warnings.warn(f"requeued job: skipping {path}: {err}", stacklevel=2)
            continue
        if best is None or (step, rank) > best[:2]:
            best = (step, rank, path)
    return None if best is None else best[2]
