"""Where a command writes (``flare_lightning.runs.folder``): decided once, named safely and
uniquely, never over another run; SLURM jobs continue their own runs after a requeue and
give every fit of one job its own folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace

from flare_lightning.runs.folder import CSV_CLASS, RunFolderError, plan_run_folder
from flare_lightning.runs.lock import RunInUseError, hold, release
from flare_lightning.runs.discovery import latest_run, resolve_checkpoint

SLURM = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "flare", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
         "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def config(tmp_path: Path, ckpt_path: str | None = None, version=None, name: str = "x") -> Namespace:
    logger = Namespace(class_path=CSV_CLASS, init_args=Namespace(save_dir=str(tmp_path), name=name, version=version))
    return Namespace(trainer=Namespace(logger=logger, default_root_dir=str(tmp_path), fast_dev_run=False), ckpt_path=ckpt_path)


def lightning_ckpt(step: int) -> dict:
    return {"state_dict": {"w": torch.zeros(2)}, "pytorch-lightning_version": "2.6.6", "epoch": 0, "global_step": step}


def run_fit(tmp_path: Path, steps: int | None = 4, **kwargs) -> Path:
    """Plan and claim a fit's folder as rank 0, leave the records a fit that saved
    ``last.ckpt`` at ``steps`` leaves (None: killed before its first save), release it."""
    folder = plan_run_folder("fit", config(tmp_path, **kwargs))
    path = folder.claim(True, lambda p: p)
    (path / "config.yaml").write_text("trainer: {}\n")
    if steps is not None:
        (path / "checkpoints").mkdir(exist_ok=True)
        torch.save(lightning_ckpt(steps), path / "checkpoints" / "last.ckpt")
    folder.release()
    return path


@pytest.fixture
def slurm_job(monkeypatch):
    """Enter a SLURM job: ``enter(job_id, restart=0, step=None)``."""

    def enter(job: str, restart: int = 0, step: str | None = None) -> None:
        for key, value in {**SLURM, "SLURM_JOB_ID": job, "SLURM_RESTART_COUNT": str(restart)}.items():
            monkeypatch.setenv(key, value)
        if step is None:
            monkeypatch.delenv("SLURM_STEP_ID", raising=False)
        else:
            monkeypatch.setenv("SLURM_STEP_ID", step)

    return enter


def test_new_runs_get_the_next_version_and_a_killed_command_leaves_no_empty_folder(tmp_path):
    assert run_fit(tmp_path).name == "version_0"
    assert run_fit(tmp_path).name == "version_1"
    folder = plan_run_folder("fit", config(tmp_path))
    folder.claim(True, lambda p: p)
    folder.release()  # the command failed before writing anything
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["version_0", "version_1"]


def test_a_given_version_never_writes_over_another_run(tmp_path):
    run_fit(tmp_path, version=3)
    with pytest.raises(RunFolderError, match="version_3 already holds a run .*--ckpt_path .*version_3/checkpoints/last.ckpt"):
        plan_run_folder("fit", config(tmp_path, version=3))
    killed = run_fit(tmp_path, steps=None, version="killed")  # nothing to continue: started over
    assert plan_run_folder("fit", config(tmp_path, version="killed")).planned == killed


@pytest.mark.parametrize("key, value", [("version", "../../elsewhere"), ("version", "/abs"), ("name", "../up"),
                                        ("name", "/abs/x"), ("version", -1)])
def test_run_folder_names_stay_inside_save_dir(tmp_path, key, value):
    with pytest.raises(RunFolderError, match=f"trainer.logger.init_args.{key}"):
        plan_run_folder("fit", config(tmp_path, **{key: value}))


def test_evaluations_get_their_own_folder_inside_the_run(tmp_path):
    run = run_fit(tmp_path)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    first = plan_run_folder("test", config(tmp_path, ckpt_path=ckpt))
    assert first.claim(True, lambda p: p) == run / "test" / "version_0"
    (first.path / "test_metrics.json").write_text("{}")
    first.release()
    second = plan_run_folder("test", config(tmp_path, ckpt_path="last"))
    assert second.claim(True, lambda p: p) == run / "test" / "version_1"
    second.release()
    assert latest_run(tmp_path, "x") == run  # evaluations are not runs


def test_best_and_last_refuse_a_run_that_is_still_training(tmp_path):
    run = run_fit(tmp_path)
    lock = hold(run)  # what a fit in progress holds
    try:
        with pytest.raises(RunInUseError, match="version_0 is still training"):
            resolve_checkpoint("last", tmp_path, "x")
        with pytest.raises(RunInUseError, match="in use by another flare command"):
            plan_run_folder("fit", config(tmp_path, ckpt_path=str(run / "checkpoints" / "last.ckpt")))
    finally:
        release(run, lock)
    assert resolve_checkpoint("last", tmp_path, "x") == str(run / "checkpoints" / "last.ckpt")


def test_fits_of_one_slurm_job_get_their_own_folders(tmp_path, slurm_job):
    """A seed loop in one sbatch: each fit its own folder, not version_<job id> shared."""
    slurm_job("4242")
    assert [run_fit(tmp_path).name for _ in range(3)] == ["version_4242", "version_4242.1", "version_4242.2"]


def test_requeued_slurm_job_resumes_each_fit_from_its_own_newest_checkpoint(tmp_path, slurm_job):
    slurm_job("4242")
    first, second = run_fit(tmp_path, steps=8), run_fit(tmp_path, steps=None)  # killed: hard failure
    (tmp_path / "x" / "version_0").mkdir()  # a run of another job, not resumed
    torch.save(lightning_ckpt(5), first / "hpc_ckpt_1.ckpt")  # an older pre-emption checkpoint
    slurm_job("4242", restart=1)
    resumed = plan_run_folder("fit", config(tmp_path))
    assert (resumed.kind, resumed.planned, resumed.checkpoint) == ("continue", first, first / "checkpoints" / "last.ckpt")
    resumed.claim(True, lambda p: p)
    resumed.release()
    again = plan_run_folder("fit", config(tmp_path))  # the script's second fit: its own folder, started over
    assert (again.kind, again.planned, again.checkpoint) == ("continue", second, None)
    again.claim(True, lambda p: p)
    again.release()
    assert plan_run_folder("fit", config(tmp_path)).planned.name == "version_4242.2"  # a third fit is new
    torch.save(lightning_ckpt(9), first / "hpc_ckpt_2.ckpt")  # pre-empted after the resume
    slurm_job("4242", restart=2)
    assert plan_run_folder("fit", config(tmp_path)).checkpoint == first / "hpc_ckpt_2.ckpt"


def test_the_same_slurm_job_id_run_twice_keeps_the_first_run(tmp_path, slurm_job):
    slurm_job("4242")
    first = run_fit(tmp_path)
    again = plan_run_folder("fit", config(tmp_path))  # not a requeue: SLURM_RESTART_COUNT is 0 again
    assert again.kind == "new" and again.planned != first


def test_srun_steps_of_one_job_each_continue_their_own_folder(tmp_path, slurm_job):
    slurm_job("77", step="0")
    a = run_fit(tmp_path)
    slurm_job("77", step="1")
    b = run_fit(tmp_path)
    slurm_job("77", restart=1, step="1")
    assert plan_run_folder("fit", config(tmp_path)).planned == b
    slurm_job("77", restart=1, step="0")
    assert plan_run_folder("fit", config(tmp_path)).planned == a


def test_slurm_job_ids_name_folders_safely(tmp_path, slurm_job):
    slurm_job("007")
    assert run_fit(tmp_path).name == "version_007"
    slurm_job("7")
    assert run_fit(tmp_path).name == "version_7"  # not 007's folder
    slurm_job("1234_5")
    assert run_fit(tmp_path).name == "version_1234_5"
    for bad in ("../..", "/tmp/x", "12 34"):
        slurm_job(bad)
        with pytest.raises(ValueError, match="is not a SLURM job id"):
            plan_run_folder("fit", config(tmp_path))
