"""The cluster scripts as shipped, run on CPU in a fake SLURM job (``srun`` on PATH runs the
command once) and under torchrun: each job trains in its own run folder and ignores the
pre-emption checkpoints of other jobs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, tiny_darcy_args
from tests.test_cli import TINY_MODEL

SMALL = [*TINY_MODEL, "--trainer.max_epochs=1", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
         "--trainer.accelerator=cpu"]


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"  # one task: drop srun's own options, run the command
    srun.write_text('#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
    srun.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC", "MASTER_"))}
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = str(REPO)
    return env | extra


@pytest.mark.slow
def test_slurm_script_runs_in_its_own_job_folder(tiny_darcy_root, tmp_path):
    # another job's pre-emption checkpoint in the shared root: loading it would crash the run
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "hpc_ckpt_1.ckpt").write_text("not a checkpoint of this job")
    slurm = {
        "SLURM_JOB_ID": "777", "SLURM_JOB_NAME": "flare", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
        "SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_PER_NODE": "gpu:1", "SLURM_CPUS_PER_TASK": "1",
    }
    cmd = ["bash", str(REPO / "scripts" / "slurm_ddp.sbatch"), str(REPO / "configs" / "quickstart.yaml"),
           *tiny_darcy_args(tiny_darcy_root), *SMALL]
    out = subprocess.run(cmd, cwd=tmp_path, env=script_env(tmp_path, **slurm), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart" / "version_777"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "test_metrics.json").is_file()
    assert "hpc_ckpt" not in out.stderr  # nothing resumed from the other job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_script_runs(tiny_darcy_root, tmp_path):
    env = script_env(tmp_path, GPUS="1", MASTER=f"localhost:{free_port()}")
    cmd = ["bash", str(REPO / "scripts" / "torchrun_ddp.sh"), str(REPO / "configs" / "quickstart.yaml"),
           *tiny_darcy_args(tiny_darcy_root), *SMALL]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "runs" / "quickstart" / "version_0" / "test_metrics.json").is_file()
