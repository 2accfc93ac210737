"""Pre-emption: a run killed mid-training and resumed from its last checkpoint (or, on
SLURM, from the checkpoint its requeue signal saved) ends with the same weights,
optimiser, scheduler and step count, and the same metrics.csv history, as a run that
was never interrupted. A fit from another run's checkpoint is a new run."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args

STEPS_PER_EPOCH = 4  # 8 training samples, batch 2
EPOCHS = 2


class Kill(L.Callback):
    """Stops the run at the start of global step ``at_step`` (a simulated kill); with
    ``slurm_signal`` it first sends itself SIGUSR1, as SLURM does before pre-empting.

    Records the global step each run starts from in ``Kill.start_steps``.

    Args:
        at_step: global step at which to stop.
        slurm_signal: send SIGUSR1 first (Lightning's SLURM requeue handler saves then).
    """

    start_steps: list[int] = []

    def __init__(self, at_step: int = 10**9, slurm_signal: bool = False) -> None:
        self.at_step = at_step
        self.slurm_signal = slurm_signal

    def on_train_start(self, trainer, pl_module) -> None:
        Kill.start_steps.append(trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            if self.slurm_signal:
                os.kill(os.getpid(), signal.SIGUSR1)
            raise KilledForTest(f"killed at step {self.at_step}")


class KilledForTest(RuntimeError):
    pass


def fit_args(root: Path, tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        "fit",
        f"--config={CONFIGS / 'quickstart.yaml'}",
        *tiny_trainer_args(tmp_path, name),
        *tiny_darcy_args(root, n_val=3, n_test=3),
        "--data.init_args.batch_size=2",
        f"--trainer.max_epochs={EPOCHS}",
        "--trainer.callbacks=[]",  # no analysis figures: time goes to training
        "--trainer.accelerator=cpu",
        "--trainer.deterministic=true",
        "--test_after_fit=false",
        "--trainer.log_every_n_steps=1",  # a row per step: the history a resume must keep
        *extra,
    ]


def last_ckpt(tmp_path: Path, name: str) -> dict:
    paths = sorted((tmp_path / name).glob("version_*/checkpoints/last.ckpt"))
    assert len(paths) == 1, f"expected one run folder with last.ckpt, got {paths}"
    return torch.load(paths[0], map_location="cpu", weights_only=False)


def history(tmp_path: Path, name: str) -> list[dict[str, str]]:
    paths = sorted((tmp_path / name).glob("version_*/metrics.csv"))
    assert len(paths) == 1, f"expected one run folder with metrics.csv, got {paths}"
    with open(paths[0], newline="") as f:
        return list(csv.DictReader(f))


def assert_same_history(
    a: list[dict[str, str]], b: list[dict[str, str]], cut_epoch: int | None = None, ignore: tuple[str, ...] = ()
) -> None:
    """The same rows (step, epoch and every metric), values equal to float32 rounding.

    Lightning does not checkpoint the running epoch aggregates of training metrics, so
    after a mid-epoch resume the epoch values of ``cut_epoch`` cover only the batches
    run after the resume; those two values are not compared, nor the ``ignore`` columns."""
    assert [sorted(k for k, v in r.items() if v) for r in a] == [sorted(k for k, v in r.items() if v) for r in b]
    for row_a, row_b in zip(a, b):
        for key, value in row_a.items():
            partial = cut_epoch is not None and row_a["epoch"] == str(cut_epoch) and key in ("train/loss_epoch", "train/rel_l2")
            if value and not partial and key not in ignore:
                assert float(row_b[key]) == pytest.approx(float(value), rel=1e-6, abs=1e-9), (key, row_a, row_b)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert a["epoch"] == b["epoch"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"weights differ at {key}"
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in opt_a:
        for name, value in opt_a[i].items():
            assert torch.equal(value, opt_b[i][name]), f"optimizer state {i}.{name} differs"
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_darcy_root, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run_cli(fit_args(tiny_darcy_root, tmp, "full"))
    return {**last_ckpt(tmp, "full"), "history": history(tmp, "full")}


@pytest.mark.parametrize("kill_step", [4, 6], ids=["epoch_boundary", "mid_epoch"])
def test_killed_run_resumes_to_same_weights(tiny_darcy_root, tmp_path, uninterrupted, kill_step):
    # last.ckpt after every step (no monitored metric, which would defer saves to validation)
    every_step = ["--checkpoint.every_n_train_steps=1", "--checkpoint.monitor=null"]
    probe = ["--trainer.callbacks+=tests.test_resume.Kill"]
    Kill.start_steps.clear()
    with pytest.raises(KilledForTest):
        run_cli(fit_args(tiny_darcy_root, tmp_path, "cut", *every_step, *probe,
                         f"--trainer.callbacks.init_args.at_step={kill_step}"))
    assert last_ckpt(tmp_path, "cut")["global_step"] == kill_step
    checkpoints = next((tmp_path / "cut").glob("version_*/checkpoints"))
    orphan = checkpoints / ".last.ckpt.k1ll3d.tmp"  # what a kill during a save leaves behind
    orphan.write_bytes(b"half a checkpoint")
    run_cli(fit_args(tiny_darcy_root, tmp_path, "cut", *every_step, *probe, "--ckpt_path=last"))
    assert Kill.start_steps == [0, kill_step], "the second run did not resume from the checkpoint"
    assert_same_training_state(uninterrupted, last_ckpt(tmp_path, "cut"))
    mid_epoch = kill_step % STEPS_PER_EPOCH != 0
    assert_same_history(uninterrupted["history"], history(tmp_path, "cut"), kill_step // STEPS_PER_EPOCH if mid_epoch else None)
    assert not orphan.exists(), "the temporary file of an interrupted save was not cleaned up"


def test_fit_from_another_runs_checkpoint_is_a_new_run(tiny_darcy_root, tmp_path):
    constant = "--model.scheduler=constant"  # OneCycle cannot be stretched past its planned steps
    run_cli(fit_args(tiny_darcy_root, tmp_path, "src", constant, "--trainer.max_epochs=1"))
    src = tmp_path / "src" / "version_0"
    before = {name: (src / name).read_bytes() for name in ("config.yaml", "hparams.yaml", "metrics.csv")}
    best = src / "checkpoints" / "best.ckpt"
    run_cli(fit_args(tiny_darcy_root, tmp_path, "src", constant, f"--ckpt_path={best}"))
    for name, content in before.items():
        assert (src / name).read_bytes() == content, f"the source run's {name} was rewritten"
    new = tmp_path / "src" / "version_1"
    assert (new / "checkpoints" / "last.ckpt").is_file(), "a fit from another run's weights is a new run"
    assert f"ckpt_path: {best}" in (new / "config.yaml").read_text()
    assert json.loads((new / "run_info.json").read_text())["checkpoint"] == str(best.resolve())


def enter_slurm_job(monkeypatch, job: str = "4242") -> None:
    """What SLURM sets for a one-task job; Lightning then uses SLURMEnvironment with auto-requeue."""
    for key, value in {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_JOB_NAME": "flare",
        "SLURM_JOB_ID": job,
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)


def test_requeued_job_after_a_hard_failure_resumes_its_last_checkpoint(tiny_darcy_root, tmp_path, uninterrupted, monkeypatch):
    """kill -9 or a lost node: no pre-emption checkpoint, the requeued job continues from its own
    last.ckpt in its own folder instead of starting over and overwriting it."""
    enter_slurm_job(monkeypatch)
    every_step = ["--checkpoint.every_n_train_steps=1", "--checkpoint.monitor=null"]
    probe = ["--trainer.callbacks+=tests.test_resume.Kill"]
    Kill.start_steps.clear()
    with pytest.raises(KilledForTest):
        run_cli(fit_args(tiny_darcy_root, tmp_path, "hard", *every_step, *probe, "--trainer.callbacks.init_args.at_step=6"))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the requeued job runs the same command
    run_cli(fit_args(tiny_darcy_root, tmp_path, "hard", *every_step, *probe))
    assert Kill.start_steps == [0, 6]
    assert sorted(p.name for p in (tmp_path / "hard").iterdir()) == ["version_4242"]
    assert_same_training_state(uninterrupted, last_ckpt(tmp_path, "hard"))
    assert_same_history(uninterrupted["history"], history(tmp_path, "hard"), cut_epoch=1)


def test_slurm_signal_saves_and_requeued_job_resumes(tiny_darcy_root, tmp_path, uninterrupted, monkeypatch):
    enter_slurm_job(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    scontrol = tmp_path / "bin" / "scontrol"  # stands in for SLURM's requeue command
    scontrol.parent.mkdir()
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'requeued'}\n")
    scontrol.chmod(0o755)
    previous = signal.getsignal(signal.SIGUSR1)
    probe = ["--trainer.callbacks+=tests.test_resume.Kill"]
    kill = ["--trainer.callbacks.init_args.at_step=5", "--trainer.callbacks.init_args.slurm_signal=true"]
    Kill.start_steps.clear()
    try:
        with pytest.raises(KilledForTest):
            run_cli(fit_args(tiny_darcy_root, tmp_path, "slurm", *probe, *kill))
        # under SLURM the job's run folder is its default root (flare_lightning/runs/folder.py)
        assert (tmp_path / "slurm" / "version_4242" / "hpc_ckpt_1.ckpt").is_file(), "the SIGUSR1 handler did not save a checkpoint"
        assert (tmp_path / "requeued").read_text().split() == ["requeue", "4242"]
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # what SLURM sets in a requeued job
        run_cli(fit_args(tiny_darcy_root, tmp_path, "slurm", *probe))  # the requeued job
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert Kill.start_steps == [0, 5], "the requeued run did not resume from the pre-emption checkpoint"
    assert_same_training_state(uninterrupted, last_ckpt(tmp_path, "slurm"))
    # Killed at step 5. Lightning's pre-emption checkpoint, saved inside a step, makes the
    # resumed run log one step number later; the rows and their values are the same.
    assert_same_history(uninterrupted["history"], history(tmp_path, "slurm"), cut_epoch=1, ignore=("step",))


def test_resume_with_more_epochs_than_the_schedule_fails_at_once(tiny_darcy_root, tmp_path):
    """A OneCycle run resumed with a larger max_epochs stops before its first step, saying why,
    instead of when the restored schedule runs out; the same max_epochs resumes as before."""
    run_cli(fit_args(tiny_darcy_root, tmp_path, "short"))
    ckpt = sorted((tmp_path / "short").glob("version_*/checkpoints/last.ckpt"))[0]
    with pytest.raises(ValueError, match=f"planned for {EPOCHS * STEPS_PER_EPOCH} optimizer steps, but this run needs"):
        run_cli(fit_args(tiny_darcy_root, tmp_path, "short", f"--ckpt_path={ckpt}", f"--trainer.max_epochs={EPOCHS + 2}"))
    cli = run_cli(fit_args(tiny_darcy_root, tmp_path, "short", f"--ckpt_path={ckpt}"))
    assert cli.trainer.global_step == EPOCHS * STEPS_PER_EPOCH


# --- a resume that changes what the checkpoint fixes is refused, records untouched ------
RECORDS = ("config.yaml", "hparams.yaml", "run_info.json", "metrics.csv", "test_metrics.json",
           "checkpoints/last.ckpt", "checkpoints/best.ckpt")
WITH_EMA = ["--trainer.callbacks+=flare_lightning.callbacks.EMA", "--model.model.init_args.channels=8",
            "--model.model.init_args.num_blocks=1", "--model.model.init_args.num_latents=4", "--test_after_fit=true",
            "--trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def ema_run(tiny_darcy_root, tmp_path_factory):
    """A finished one-epoch run with an EMA of its weights, and its records' bytes."""
    out = tmp_path_factory.mktemp("ema_run")
    run_cli(fit_args(tiny_darcy_root, out, "ema", *WITH_EMA))
    run = out / "ema" / "version_0"
    return out, run, {name: (run / name).read_bytes() for name in RECORDS}


@pytest.mark.parametrize("change, option", [
    (["--model.model.init_args.channels=16"], "model.model.init_args.channels: 8 -> 16"),
    (["--model.model.init_args.num_blocks=2"], "model.model.init_args.num_blocks: 1 -> 2"),
    (["--model.model.init_args.num_latents=8"], "model.model.init_args.num_latents: 4 -> 8"),
    (["--model.model=flare_lightning.models.Transolver"], "model.model.class_path"),
    (["--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0.1"], "model.optimizer"),
    (["--model.lr=0.1"], "model.lr: 0.003 -> 0.1"),  # the restored optimizer would ignore it
    (["--data.init_args.batch_size=4"], "data.init_args.batch_size: 2 -> 4"),
    (["--data.init_args.n_train=6"], "data.init_args.n_train: 8 -> 6"),
    (["--data.init_args.test_file=train.mat", "--data.init_args.train_file=test.mat"], "data.init_args.train_file"),
    (["--data=datamodules.ElasticityDataModule"], "data.class_path"),
    (["--trainer.callbacks=[]"], "trainer.callbacks"),  # dropping the EMA
])
def test_resume_that_changes_the_checkpoint_is_refused_naming_the_option(ema_run, tiny_darcy_root, change, option):
    out, run, before = ema_run
    with pytest.raises(ValueError, match="fit --ckpt_path .* resumes a run, and its checkpoint fixes") as err:
        run_cli(fit_args(tiny_darcy_root, out, "ema", *WITH_EMA, "--ckpt_path=last", *change))
    assert option in str(err.value)
    assert {name: (run / name).read_bytes() for name in RECORDS} == before, "a refused resume rewrote the run's records"
    assert sorted(p.name for p in (out / "ema").iterdir()) == ["version_0"]


def test_resume_refused_after_restoring_leaves_the_records_as_they_were(ema_run, tiny_darcy_root):
    """More epochs than the OneCycle schedule was planned for: refused by the module once the
    checkpoint is restored, before anything is written."""
    out, run, before = ema_run
    with pytest.raises(ValueError, match="planned for 4 optimizer steps"):
        run_cli(fit_args(tiny_darcy_root, out, "ema", *WITH_EMA, "--ckpt_path=last", "--trainer.max_epochs=3"))
    assert {name: (run / name).read_bytes() for name in RECORDS} == before


def test_two_fits_in_one_slurm_job_keep_their_own_folders(tiny_darcy_root, tmp_path, monkeypatch):
    """A seed loop in one sbatch: the second fit must not overwrite the first's metrics and
    checkpoints in a shared version_<job id>."""
    enter_slurm_job(monkeypatch, "777")
    for seed in (0, 1):
        run_cli(fit_args(tiny_darcy_root, tmp_path, "seeds", *WITH_EMA[1:4], "--trainer.max_epochs=1",
                         f"--seed_everything={seed}", "--data.init_args.n_train=4"))
    runs = sorted((tmp_path / "seeds").iterdir())
    assert [r.name for r in runs] == ["version_777", "version_777.1"]
    seeds = [yaml.safe_load((r / "config.yaml").read_text())["seed_everything"] for r in runs]
    assert seeds == [0, 1] and all((r / "checkpoints" / "last.ckpt").is_file() for r in runs)


class SeenBatches(L.Callback):
    """Each training batch's epoch, sample ids and a checksum of its points (the subsets)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, list[int], float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, batch["sample_id"].tolist(), round(float(batch["x"].double().sum()), 6)))


class StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def test_plain_trainer_resume_from_an_end_of_epoch_checkpoint_sees_the_same_data(tiny_darcy_root, tmp_path):
    """Outside the CLI too (a Trainer with its default end-of-epoch checkpoints), a resumed run
    trains on the samples, in the order and with the point subsets, of an uninterrupted one."""
    from datamodules import DarcyDataModule
    from flare_lightning.models import FLARE
    from flare_lightning.training.module import SurrogateModule

    def fit(folder: str, *callbacks: L.Callback, ckpt: str | None = None) -> list:
        L.seed_everything(0)
        dm = DarcyDataModule(root=str(tiny_darcy_root), train_file="train.mat", test_file="test.mat", n_train=8,
                             n_val=2, n_test=2, stride=1, batch_size=2, train_points=60)
        model = SurrogateModule(FLARE(3, 1, channels=16, num_blocks=1, num_heads=2, num_latents=4), 3, 1)
        seen = SeenBatches()
        trainer = L.Trainer(max_epochs=3, default_root_dir=tmp_path / folder, callbacks=[seen, *callbacks],
                            enable_progress_bar=False, enable_model_summary=False, logger=False, accelerator="cpu")
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        return seen.seen

    full = fit("full")
    first = fit("cut", StopAfterFirstEpoch())
    (ckpt,) = (tmp_path / "cut" / "checkpoints").glob("epoch=0-*.ckpt")
    rest = fit("resumed", ckpt=str(ckpt))
    assert [s[0] for s in full] == [0] * 4 + [1] * 4 + [2] * 4
    assert first + rest == full
