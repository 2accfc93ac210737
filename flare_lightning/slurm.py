"""One run folder per SLURM job, so Lightning's automatic resume from ``hpc_ckpt_N.ckpt``
(it loads any it finds in ``default_root_dir`` under SLURM) only ever sees this job's own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.environments import SLURMEnvironment

CSV_CLASS = "lightning.pytorch.loggers.CSVLogger"


def pin_run_to_slurm_job(trainer_cfg: Any) -> None:
    """Under a SLURM job, in place on the parsed ``trainer`` config: the CSV logger's
    version becomes the job id when unset (``<save_dir>/<name>/version_<job id>``), and
    ``default_root_dir`` becomes that run folder (or ``<default_root_dir>/slurm_<job id>``
    without a CSV logger). A requeued job keeps its id, so it finds its own pre-emption
    checkpoint and continues its own run folder; another job never does."""
    job = os.environ.get("SLURM_JOB_ID")
    if trainer_cfg is None or not job or not SLURMEnvironment.detect():
        return
    loggers = trainer_cfg.get("logger")
    candidates = loggers if isinstance(loggers, list) else [loggers]
    csv = next((lg for lg in candidates if getattr(lg, "class_path", None) == CSV_CLASS), None)
    if csv is None:
        trainer_cfg["default_root_dir"] = str(Path(trainer_cfg.get("default_root_dir") or ".") / f"slurm_{job}")
        return
    args = csv.init_args
    if args.get("version") is None:
        args["version"] = int(job) if job.isdigit() else job
    version = args["version"]
    folder = version if isinstance(version, str) else f"version_{version}"
    trainer_cfg["default_root_dir"] = str(Path(args.get("save_dir") or ".") / (args.get("name") or "") / folder)
