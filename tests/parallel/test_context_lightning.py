"""``ContextParallelStrategy`` through ``flare`` on CPU processes: the same loss curve,
test metrics and predictions as one process; checkpoints resume; each sample is
predicted once. 2 processes = 1 data group x 2 context ranks; 4 = 2 x 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args
from tests.parallel.cli_worker import run_commands
from tests.parallel.spawn import run_spawned

STRATEGY = "--trainer.strategy=flare_lightning.parallel.ContextParallelStrategy"
SHARDED = ["--trainer.callbacks+=tests.parallel.cli_worker.AssertSharded", "--trainer.callbacks.points=85"]
EPOCHS = 5  # 8 training samples, global batch 2: 4 steps per epoch, 20 steps


def common(root: Path, out: Path, name: str, batch_size: int, devices: int) -> list[str]:
    return [
        f"--config={CONFIGS / 'quickstart.yaml'}",
        *tiny_darcy_args(root, n_val=3, n_test=3),  # 13x13 grid: 169 points, shares of 85 + 84
        *tiny_trainer_args(out, name),
        f"--data.init_args.batch_size={batch_size}",
        "--data.init_args.eval_batch_size=2",
        "--data.init_args.num_workers=0",
        "--model.model.init_args.channels=16",
        "--model.model.init_args.num_blocks=2",
        "--model.model.init_args.num_latents=8",
        "--trainer.accelerator=cpu",
        f"--trainer.devices={devices}",
        "--trainer.log_every_n_steps=1",
        "--trainer.deterministic=true",
    ]


def run_folder(out: Path, name: str) -> Path:
    runs = sorted((out / name).glob("version_*"))
    assert len(runs) == 1, f"expected one run folder (rank 0 writes), got {runs}"
    return runs[0]


def train_losses(run: Path) -> dict[int, float]:
    """train/loss per global step (the last row wins, as after a resume)."""
    losses = {}
    with open(run / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss_step"):
                losses[int(row["step"])] = float(row["train/loss_step"])
    return losses


def predictions(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``flare predict``'s VTK files (one per test sample) as {name: {"pos", "pred"}}."""
    import vtk
    from vtkmodules.util.numpy_support import vtk_to_numpy

    merged: dict = {}
    for path in sorted((run / "predict" / "version_0").glob("*.vtu")):
        reader = vtk.vtkXMLUnstructuredGridReader()
        reader.SetFileName(str(path))
        reader.Update()
        grid = reader.GetOutput()
        pred = torch.from_numpy(vtk_to_numpy(grid.GetPointData().GetArray("prediction")).copy()).reshape(-1, 1)
        pos = torch.from_numpy(vtk_to_numpy(grid.GetPoints().GetData()).copy())
        merged[path.stem] = {"pos": pos, "pred": pred}
    return merged


@pytest.fixture(scope="module")
def single_run(tiny_darcy_root, tmp_path_factory) -> Path:
    """One process, global batch 2, plus a predict run on its last checkpoint."""
    out = tmp_path_factory.mktemp("single")
    args = common(tiny_darcy_root, out, "single", 2, 1)
    plain = [a for a in args if "callbacks" not in a]
    run_cli(["fit", *plain, f"--trainer.max_epochs={EPOCHS}", "--trainer.callbacks=[]"])
    run_cli(["predict", *plain, "--ckpt_path=last", "--trainer.callbacks=[]"])
    return run_folder(out, "single")


def assert_same_run(run: Path, single: Path, steps: range = range(EPOCHS * 4)) -> None:
    """Same train/loss at ``steps`` (a resumed run's metrics.csv keeps the killed run's rows
    and appends), same test metrics, same predictions of every sample, each once."""
    ref, got = train_losses(single), train_losses(run)
    assert sorted(ref) == list(range(EPOCHS * 4)) and sorted(got) == list(steps)
    for step in steps:
        value = ref[step]
        assert got[step] == pytest.approx(value, rel=1e-5), f"train/loss at step {step}: {got[step]} vs {value}"
    ref_test = json.loads((single / "test_metrics.json").read_text())
    got_test = json.loads((run / "test_metrics.json").read_text())
    for key, value in ref_test.items():
        if key.startswith("test/"):  # beside them: provenance (checkpoint, data, environment)
            assert got_test[key] == pytest.approx(value, rel=1e-5), key
    ref_pred, got_pred = predictions(single), predictions(run)
    assert sorted(got_pred) == sorted(ref_pred)  # every sample once, whole
    for sid, sample in ref_pred.items():
        assert got_pred[sid]["pred"].shape == sample["pred"].shape == (169, 1)
        torch.testing.assert_close(got_pred[sid]["pos"], sample["pos"])  # same points, same order
        torch.testing.assert_close(got_pred[sid]["pred"], sample["pred"], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_two_context_ranks_match_one_process_with_resume(tiny_darcy_root, tmp_path, single_run):
    """1 x 2: killed at step 12 (after 3 epochs), resumed from last.ckpt to the end (tested
    after fit), then predict; an analysis callback runs on rank 0 alone (local_forward)
    without hanging the group."""
    args = [*common(tiny_darcy_root, tmp_path, "cp", 2, 2), STRATEGY, "--trainer.strategy.context_parallel=2"]
    plots = [
        "--trainer.callbacks+=flare_lightning.callbacks.predictions.PredictionPlots",
        "--trainer.callbacks.num_samples=1",
    ]
    fit = ["fit", *args, f"--trainer.max_epochs={EPOCHS}", "--trainer.callbacks=[]", *plots, *SHARDED]
    kill = ["--trainer.callbacks+=tests.test_resume.Kill", "--trainer.callbacks.at_step=12", "--test_after_fit=false"]
    commands = [
        [*fit, *kill],
        [*fit, "--ckpt_path=last"],
        ["predict", *args, "--trainer.callbacks=[]", "--ckpt_path=last"],
    ]
    run_spawned(run_commands, 2, commands)
    run = run_folder(tmp_path, "cp")
    # one VTK file per test sample (3), written by the group's first rank
    assert len(list((run / "predict" / "version_0").glob("*.vtu"))) == 3
    assert (run / "predictions").is_dir()
    assert_same_run(run, single_run)  # the resumed run appends to the killed run's metrics.csv
    # every step of both runs (killed, resumed), on both ranks of the group
    ref = train_losses(single_run)
    for rank in range(2):
        rows = [line.split() for line in (tmp_path / f"losses_rank{rank}.txt").read_text().splitlines()]
        got = {int(step): float(loss) for step, loss in rows}
        assert sorted(got) == list(range(EPOCHS * 4)) and len(rows) == EPOCHS * 4
        for step, value in ref.items():
            assert got[step] == pytest.approx(value, rel=1e-5), f"rank {rank}, step {step}"


@pytest.mark.slow
def test_two_by_two_matches_one_process(tiny_darcy_root, tmp_path, single_run):
    """2 data-parallel groups x 2 context ranks on 4 processes, per-rank batch 1."""
    args = [*common(tiny_darcy_root, tmp_path, "dp_cp", 1, 4), STRATEGY, "--trainer.strategy.context_parallel=2",
            "--trainer.callbacks=[]"]
    commands = [["fit", *args, f"--trainer.max_epochs={EPOCHS}", *SHARDED], ["predict", *args, "--ckpt_path=last"]]
    run_spawned(run_commands, 4, commands)
    run = run_folder(tmp_path, "dp_cp")
    # the two data-parallel groups predict disjoint samples: one VTK file per test sample (3)
    assert len(list((run / "predict" / "version_0").glob("*.vtu"))) == 3
    assert_same_run(run, single_run)


def test_context_size_must_divide_the_world():
    from flare_lightning.parallel import ContextParallelStrategy

    with pytest.raises(ValueError, match="context_parallel"):
        ContextParallelStrategy(context_parallel=0)


def test_fast_step_is_refused_clearly():
    from flare_lightning.models import FLARE
    from flare_lightning.training.module import SurrogateModule
    from flare_lightning.parallel import ContextParallelStrategy

    strategy = ContextParallelStrategy(context_parallel=2)
    strategy._lightning_module = SurrogateModule(FLARE(3, 1, channels=8, num_blocks=1, num_heads=2, num_latents=4),
                                                 3, 1, fast_step=True)
    with pytest.raises(ValueError, match="fast_step"):
        strategy.setup(None)


def test_small_nccl_buffers_are_asked_for_before_nccl_starts(monkeypatch):
    """The strategy sets NCCL's buffer size and channel count (where unset) before DDP's process
    group exists; a user's own value wins; ``small_nccl_buffers=False`` leaves NCCL alone."""
    from flare_lightning.parallel import ContextParallelStrategy
    from flare_lightning.parallel import strategy as strategy_module
    from flare_lightning.parallel.nccl import use_small_nccl_buffers

    env = {"NCCL_BUFFSIZE": "8388608"}
    assert use_small_nccl_buffers(env) == {"NCCL_MAX_NCHANNELS": "4"}
    assert env == {"NCCL_BUFFSIZE": "8388608", "NCCL_MAX_NCHANNELS": "4"}

    order = []

    def init(self):
        order.append("process group")
        raise RuntimeError("stop here")

    monkeypatch.setattr(strategy_module, "use_small_nccl_buffers", lambda: order.append("nccl"))
    monkeypatch.setattr(strategy_module.DDPStrategy, "setup_distributed", init)
    for flag, expected in ((True, ["nccl", "process group"]), (False, ["process group"])):
        order.clear()
        with pytest.raises(RuntimeError, match="stop here"):
            ContextParallelStrategy(context_parallel=2, small_nccl_buffers=flag).setup_distributed()
        assert order == expected
