"""A SLURM job's identity and the run folders it trained in, so that a requeued job continues
its own runs from their newest checkpoint and every fit of one job has its own folder.

A folder that a job trains in holds ``slurm_jobs.json``, one entry per execution that used
it: job id, restart count (``SLURM_RESTART_COUNT``, 0 before any requeue), step (the
``srun`` that started the processes) and slot (how many fits of that execution and step ran
before it: a seed loop in one script). A requeued execution runs the same script, so its
k-th fit of a step continues the folder of the k-th fit of that step before the requeue.
Everything here only reads, except ``add_claim``, which rank 0 calls once the distributed
processes have all started (so every rank decides from the same files).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.plugins.environments import SLURMEnvironment

from flare_lightning.atomic import atomic_write_text

CLAIMS = "slurm_jobs.json"
# SLURM's batch, extern and interactive steps have ids from 0xFFFFFFF0 on: not an srun step.
FIRST_SPECIAL_STEP = 0xFFFFFFF0


@dataclass(frozen=True)
class SlurmJob:
    """The job, execution and step this process runs in.

    Args:
        job: ``SLURM_JOB_ID`` (digits; ``<id>_<task>`` is kept as written).
        restart: ``SLURM_RESTART_COUNT`` (how often the job was requeued).
        step: ``SLURM_STEP_ID`` of the ``srun`` that started this process, ``"batch"`` without one.
    """

    job: str
    restart: int
    step: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SlurmJob | None:
        """The job of a process Lightning runs under SLURM (``SLURMEnvironment.detect()``), else None.
        A job id that is not a number is refused: it names run folders."""
        env = os.environ if env is None else env
        job = env.get("SLURM_JOB_ID")
        if job is None or not SLURMEnvironment.detect():
            return None
        if not re.fullmatch(r"\d+(_\d+)?", job):
            raise ValueError(f"SLURM_JOB_ID={job!r} is not a SLURM job id (expected digits, e.g. 123456): "
                             "it names the run folder, so it must not hold paths or other characters")
        restart = env.get("SLURM_RESTART_COUNT", "0")
        if not restart.isdigit():
            raise ValueError(f"SLURM_RESTART_COUNT={restart!r} is not a count (expected digits)")
        step = env.get("SLURM_STEP_ID", "")
        return cls(job, int(restart), step if step.isdigit() and int(step) < FIRST_SPECIAL_STEP else "batch")

    @property
    def folder_name(self) -> str:
        """The first run folder of this job: ``version_<job id>`` (later fits add ``.1``, ``.2``...)."""
        return f"version_{self.job}"

    def entry(self, slot: int) -> dict[str, object]:
        return {"job": self.job, "restart": self.restart, "step": self.step, "slot": slot}


def read_claims(folder: Path) -> list[dict[str, object]]:
    """The entries of ``<folder>/slurm_jobs.json`` (none when absent or unreadable)."""
    try:
        claims = json.loads((folder / CLAIMS).read_text())
    except (OSError, ValueError):
        return []
    return [c for c in claims if isinstance(c, dict)] if isinstance(claims, list) else []


def add_claim(folder: Path, entry: dict[str, object]) -> None:
    """Record in ``folder`` that this execution trains there."""
    atomic_write_text(folder / CLAIMS, json.dumps([*read_claims(folder), entry], indent=1) + "\n")


def job_folders(job: SlurmJob, base: Path) -> list[tuple[Path, list[dict[str, object]]]]:
    """The folders under ``base`` that ``job`` trained in, with their entries for it, in the
    order the job first used them."""
    found = []
    for folder in base.iterdir() if base.is_dir() else []:
        entries = [c for c in read_claims(folder) if c.get("job") == job.job] if folder.is_dir() else []
        if entries:
            found.append((folder, entries))
    return sorted(found, key=lambda item: (min(int(c.get("restart", 0)) for c in item[1]), item[0].name))


def requeued_folder(job: SlurmJob, base: Path) -> tuple[Path | None, int]:
    """(the folder this fit continues, its slot): the folder that the same step and slot of an
    earlier execution of this job trained in, unless this execution already uses it; None when
    this fit is new."""
    folders = job_folders(job, base)
    mine = [(f, e) for f, e in folders if any(c.get("restart") == job.restart for c in e)]
    slot = sum(1 for _, e in mine if any(c.get("step") == job.step for c in e if c.get("restart") == job.restart))
    for folder, entries in folders:
        if any(c.get("restart") == job.restart for c in entries):
            continue
        if any(c.get("step") == job.step and c.get("slot") == slot and int(c.get("restart", 0)) < job.restart
               for c in entries):
            return folder, slot
    return None, slot
