"""benchmarks/accuracy.py on CPU: the launcher's command lines (dry run), the spread of runs over
GPUs, skipping and resuming, and the records and page collected from fake run folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from flare_lightning.cli import make_cli
from tests.helpers import CONFIGS, REPO, import_benchmark


@pytest.fixture(scope="module")
def accuracy():
    return import_benchmark("accuracy")


@pytest.fixture(scope="module")
def acc_runs():
    return import_benchmark("accuracy_runs")


@pytest.fixture(scope="module")
def acc_launch():
    return import_benchmark("accuracy_launch")


@pytest.fixture(scope="module")
def acc_collect():
    return import_benchmark("accuracy_collect")


def opts(cmd: list[str]) -> dict:
    """The command's options; ``config`` lists every ``--config`` in order."""
    out = dict(a.removeprefix("--").split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
    out["config"] = [a.split("=", 1)[1] for a in cmd if a.startswith("--config=")]
    return out


def test_command_lines(acc_runs, tmp_path):
    flare = acc_runs.Run("flare", "darcy", 3, 50, tmp_path)
    cmd = flare.command()
    assert cmd[1:4] == ["-m", "flare_lightning", "fit"]
    o = opts(cmd)
    assert o["config"] == [str(CONFIGS / "darcy.yaml")] and o["seed_everything"] == "3"
    assert o["trainer.max_epochs"] == "50" and o["trainer.logger.init_args.save_dir"] == str(tmp_path)
    assert (o["trainer.logger.init_args.name"], o["trainer.logger.init_args.version"]) == ("flare_darcy", "seed3_ep50")
    assert "model.fast_step" not in o and "ckpt_path" not in o
    assert opts(flare.command(fast_step=True))["model.fast_step"] == "true"

    base = acc_runs.Run("transolver", "elasticity", 0, None, tmp_path)
    o = opts(base.command(extra=("--trainer.precision=bf16-mixed",)))
    assert o["config"] == [str(CONFIGS / "elasticity.yaml"), str(CONFIGS / "baselines" / "transolver_elasticity.yaml")]
    assert "trainer.max_epochs" not in o and o["trainer.precision"] == "bf16-mixed"
    assert (o["data.init_args.n_train"], o["data.init_args.n_test"]) == ("1000", "200")  # the paper's counts
    assert base.folder == tmp_path / "transolver_elasticity" / "seed0_full"


def test_interrupted_runs_resume_and_finished_runs_are_skipped(acc_runs, tmp_path):
    run = acc_runs.Run("perceiverio", "quickstart", 0, 5, tmp_path)
    (run.folder / "checkpoints").mkdir(parents=True)
    (run.folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert opts(run.command())["ckpt_path"] == str(run.folder / "checkpoints" / "last.ckpt")
    assert not acc_runs.finished(run.folder)
    (run.folder / "test_metrics.json").write_text(json.dumps({"test/rel_l2": None}))  # a diverged run is not done
    assert not acc_runs.finished(run.folder)
    (run.folder / "test_metrics.json").write_text(json.dumps({"test/rel_l2": 0.01, "test/loss": 0.01}))
    assert acc_runs.finished(run.folder)


@pytest.mark.parametrize("model,dataset", [("flare", "elasticity"), ("transformer", "darcy"), ("perceiverio", "quickstart")])
def test_command_lines_parse_as_flare_fit(acc_runs, tmp_path, model, dataset):
    """Every option the launcher adds is one the CLI knows (nothing is trained)."""
    cmd = acc_runs.Run(model, dataset, 1, 7, tmp_path).command()
    with mock.patch("sys.argv", ["flare"]):
        cli = make_cli(cmd[4:], run=False)
    assert cli.trainer.max_epochs == 7
    assert Path(cli.trainer.logger.log_dir) == tmp_path / f"{model}_{dataset}" / "seed1_ep7"


def test_a_ddp_run_keeps_the_protocols_global_batch(acc_runs, tmp_path):
    """--devices 0,1: each run is DDP on both GPUs with the config's batch split between them, and
    the CLI accepts what the launcher adds (nothing is trained)."""
    run = acc_runs.Run("transformer", "darcy", 0, None, tmp_path)
    assert run.batch_size() == 2
    cmd = run.command(True, ("--trainer.precision", "32-true"), gpus=2)
    assert cmd[-5:] == ["--trainer.devices=2", "--trainer.strategy=ddp", "--data.init_args.batch_size=1",
                        "--trainer.precision", "32-true"]  # the caller's extra options come last
    with mock.patch("sys.argv", ["flare"]):
        cli = make_cli([*cmd[4:], "--trainer.accelerator=cpu"], run=False)
    assert cli.trainer.num_devices == 2 and type(cli.trainer.strategy).__name__ == "DDPStrategy"
    assert cli.datamodule.batch_size == 1
    assert acc_runs.estimated_steps(run) == 500 * 500  # steps per epoch as on one GPU
    assert acc_runs.gpus_per_run(["0,1", "2,3"]) == 2 and acc_runs.gpus_per_run(["0", "0"]) == 1
    for bad in (["0,1", "2"], ["0,"]):
        with pytest.raises(SystemExit, match="give each worker the same number of GPUs"):
            acc_runs.gpus_per_run(bad)


def test_ddp_launch_plans_and_refuses(accuracy, acc_runs, acc_launch, tmp_path, capsys, monkeypatch):
    base = ["launch", "--datasets", "darcy", "--out", str(tmp_path), "--fast-step", "--dry-run"]
    with mock.patch.object(acc_launch.subprocess, "Popen") as popen:
        accuracy.main([*base, "--models", "transformer", "--devices", "0,1"])
        printed = capsys.readouterr().out
        assert "CUDA_VISIBLE_DEVICES=0,1" in printed and "--data.init_args.batch_size=1" in printed
        with pytest.raises(SystemExit, match=r"transolver_elasticity.yaml: data.init_args.batch_size 1 does not split "
                                             "over 2 GPUs per run"):
            accuracy.main([*base, "--models", "transolver", "--datasets", "elasticity", "--devices", "0,1"])
        # a run begun on one GPU is not resumed as a DDP run (the per-GPU batch differs)
        run = acc_runs.Run("transformer", "darcy", 0, None, tmp_path)
        run.folder.mkdir(parents=True)
        (run.folder / "launch.json").write_text(json.dumps({"attempts": [{"command": run.command(True)}]}))
        with pytest.raises(SystemExit, match="this launch asks --model.fast_step=true --trainer.devices=2"):
            accuracy.main([*base, "--models", "transformer", "--devices", "0,1"])
    popen.assert_not_called()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = acc_launch.worker_env(["0,1", "2,3"], 1, cpus=32)  # four processes in all
    assert (env["CUDA_VISIBLE_DEVICES"], env["OMP_NUM_THREADS"]) == ("2,3", "8")


def test_runs_are_spread_evenly_over_the_gpus(acc_runs, tmp_path):
    runs = acc_runs.plan(list(acc_runs.MODELS), list(acc_runs.DATASETS), [0, 1], 10, tmp_path)
    assert len(runs) == 4 * 3 * 2
    slots = acc_runs.assign(runs, ["0", "0", "1", "1"])
    assigned = [r for q in slots.values() for r in q]
    assert sorted(map(id, assigned)) == sorted(map(id, runs))
    loads = [sum(acc_runs.estimated_steps(r) for r in q) for q in slots.values()]
    assert max(loads) - min(loads) <= max(acc_runs.estimated_steps(r) for r in runs)
    # Transolver trains elasticity with batch 1: 1000 steps per epoch
    assert acc_runs.estimated_steps(acc_runs.Run("transolver", "elasticity", 0, 10, tmp_path)) == 10_000


def test_bad_choices_are_reported(acc_runs, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'gnot'"):
        acc_runs.plan(["gnot"], ["darcy"], [0], None, tmp_path)
    with pytest.raises(ValueError, match="--epochs must be >= 1"):
        acc_runs.plan(["flare"], ["darcy"], [0], 0, tmp_path)


def test_dry_run_prints_and_starts_nothing(accuracy, acc_launch, tmp_path, capsys):
    with mock.patch.object(acc_launch, "prepare_data") as prepare, mock.patch.object(acc_launch.subprocess, "Popen") as popen:
        accuracy.main(["launch", "--models", "flare", "transolver", "--datasets", "quickstart", "--devices", "0", "1",
                       "--out", str(tmp_path), "--fast-step", "--dry-run"])
    printed = capsys.readouterr().out
    assert "CUDA_VISIBLE_DEVICES=0" in printed and "CUDA_VISIBLE_DEVICES=1" in printed
    assert printed.count("--model.fast_step=true") == 2
    prepare.assert_not_called()
    popen.assert_not_called()


def test_launch_refuses_runs_made_with_other_settings(accuracy, acc_runs, acc_launch, tmp_path, capsys):
    """A run folder holds one run: relaunching it with another precision (or without the fast
    step) is refused before anything starts, naming the record and both settings; the same
    settings from another machine (other paths, other interpreter) resume as before."""
    run = acc_runs.Run("transolver", "darcy", 0, None, tmp_path)
    run.folder.mkdir(parents=True)
    recorded = run.command(True, ("--trainer.precision", "32-true"))
    elsewhere = ["/opt/other/python3"] + [a.replace(str(tmp_path), "/dev/shm/acc1") for a in recorded[1:]]
    (run.folder / "launch.json").write_text(json.dumps({"attempts": [{"command": elsewhere, "wall_s": None}]}))
    launch = ["launch", "--models", "transolver", "--datasets", "darcy", "--devices", "0", "--out", str(tmp_path),
              "--dry-run"]
    with mock.patch.object(acc_launch.subprocess, "Popen") as popen:
        accuracy.main([*launch, "--fast-step", "--", "--trainer.precision", "32-true"])  # same settings: fine
        with pytest.raises(SystemExit, match="started with --model.fast_step=true --trainer.precision 32-true; "
                                             "this launch asks --model.fast_step=true --trainer.precision bf16-mixed"):
            accuracy.main([*launch, "--fast-step", "--", "--trainer.precision", "bf16-mixed"])
        (run.folder / "test_metrics.json").write_text(json.dumps({"test/rel_l2": 0.01}))
        with pytest.raises(SystemExit, match=r"launch.json: finished with .*; this launch asks --trainer.precision 32-true"):
            accuracy.main([*launch, "--", "--trainer.precision", "32-true"])  # no fast step
    popen.assert_not_called()
    assert acc_runs.run_settings(recorded, "darcy") == ["--model.fast_step=true", "--trainer.precision", "32-true"]


def page(acc_collect, results: list, out: Path, tmp_path: Path, notes: str = "") -> str:
    """ACCURACY.md as ``collect`` renders it: from the records it writes for ``results``."""
    from benchmarks import accuracy_page, render

    records = tmp_path / "records"
    acc_collect.write_run_records(results, out, records)
    return accuracy_page.render(render.load(records, REPO), render.link_from(tmp_path / "ACCURACY.md"), notes)


def fake_run(out: Path, name: str, tag: str, rel_l2, wall_s=None, card="NVIDIA H200", commit="abc1234") -> None:
    folder = out / name / tag
    folder.mkdir(parents=True)
    if rel_l2 is not False:
        (folder / "test_metrics.json").write_text(json.dumps({"test/rel_l2": rel_l2, "test/loss": 0.0}))
    if wall_s is not None:
        cmd = ["flare", "fit"] + (["--trainer.precision=bf16-mixed"] if "transolver" in name else [])
        attempts = [{"wall_s": w, "rc": 0, "command": cmd} for w in (wall_s if isinstance(wall_s, list) else [wall_s])]
        (folder / "launch.json").write_text(json.dumps({"attempts": attempts, "card": card, "commit": commit}))


def test_collector_on_fake_runs(acc_collect, tmp_path):
    out = tmp_path / "runs"
    fake_run(out, "flare_darcy", "seed0_ep50", 0.0061, wall_s=5400)
    fake_run(out, "transolver_darcy", "seed0_ep50", 0.0200, wall_s=[1800, 1200], commit="def5678+dirty")
    fake_run(out, "transolver_darcy", "seed1_ep50", 0.0180, wall_s=3000)
    fake_run(out, "transformer_darcy", "seed0_ep50", False)  # still running: no test_metrics.json
    fake_run(out, "flare_quickstart", "seed0_full", 0.037, wall_s=180, card="cpu")
    fake_run(out, "flare_pipe", "seed0_full", 0.01)  # a dataset the table does not have
    results = acc_collect.collect(out)
    assert sorted((r.model, r.dataset, r.seed, r.budget) for r in results) == [
        ("flare", "darcy", 0, "ep50"), ("flare", "quickstart", 0, "full"),
        ("transolver", "darcy", 0, "ep50"), ("transolver", "darcy", 1, "ep50")]
    text = page(acc_collect, results, out, tmp_path)
    full, reduced = text.split("## Full budget")[1].split("## Reduced budget: 50 epochs")
    reduced = reduced.split("## Runs")[0]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in reduced.splitlines() if line.startswith("| ")}
    # the fake runs' commits are not in this repository's history: every cell says so
    assert rows["FLARE"][1] == "**6.10** (32-true; 1.5 h; unknown commit)" and rows["FLARE"][2] == "*5.1*"  # paper, real files
    assert rows["Transolver"][1] == "**19.00** (18.00-20.00, 2 seeds; bf16-mixed; 50 min each; unknown commit)"
    assert rows["Transolver"][2] == "*18.6*"
    assert rows["Transformer"][1] == "not run" and rows["Transformer"][2] == "*4.4*"
    assert rows["PerceiverIO"][2] == ""  # the paper gives no number
    assert "**37.00** (32-true; 3 min; unknown commit)" in full
    assert "real FNO files" in text and "not comparable cell by cell" in text
    runs = text.split("## Runs")[1]
    # 50 of Darcy's 500 epochs took 50 min: the full budget at this pace is 10x longer
    assert "| Transolver | darcy | ep50 | 0 | bf16-mixed | 2.0000e-02 | 50 min, 2 attempts | 8.3 h | NVIDIA H200 |" in runs
    assert "| def5678 | unknown commit | [transolver_darcy_seed0_ep50_bf16-mixed.json](records/accuracy/transolver_darcy_seed0_ep50_bf16-mixed.json) |" in runs
    assert "| FLARE | quickstart | full | 0 | 32-true | 3.7000e-02 | 3 min | 3 min | cpu |" in runs
    record = json.loads((tmp_path / "records" / "accuracy" / "transolver_darcy_seed0_ep50_bf16-mixed.json").read_text())
    assert (record["commit"], record["dirty"], record["card"]) == ("def5678", True, "NVIDIA H200")
    assert record["paths"] == ["flare_lightning/", "datamodules/", "configs/darcy.yaml", "configs/baselines/transolver_darcy.yaml"]
    assert record["rows"][0]["full_budget_s"] == pytest.approx(3000 * 10)
    assert acc_collect.run_precision(["flare", "--trainer.precision", "16-mixed"]) == "16-mixed"
    bf16 = ["flare", "--trainer.precision", "bf16-mixed"]
    assert acc_collect.run_precision([*bf16, "--model.eval_fp32", "true"]) == "bf16-mixed, fp32 eval"
    assert acc_collect.run_precision([*bf16, "--model.eval_fp32=True"]) == "bf16-mixed, fp32 eval"
    assert acc_collect.run_precision([*bf16, "--model.eval_fp32", "false"]) == "bf16-mixed"
    assert acc_collect.run_precision(["flare", "--model.eval_fp32", "true"]) == "32-true"  # fp32 already
    assert acc_collect.run_precision(["flare", "--float32_matmul_precision", "high"]) == "32-true, TF32 matmuls"
    assert acc_collect.run_precision([*bf16, "--float32_matmul_precision=highest"]) == "bf16-mixed"
    parts = "--model.model.init_args.fp32_parts"
    assert acc_collect.run_precision([*bf16, f"{parts}=[residual, mixer]"]) == "bf16-mixed, fp32 mixer+residual"
    assert acc_collect.run_precision([*bf16, parts, "[kv]"]) == "bf16-mixed, fp32 kv"
    assert acc_collect.run_precision([*bf16, parts, "[]"]) == "bf16-mixed"


def test_precision_arms_of_one_cell_keep_their_own_records_and_lines(acc_collect, tmp_path):
    """An ablation's arms share model, data set and seed: each keeps its record, the cell has a line per
    precision (seeds average within one only), and the comparison table holds each against 32-true."""
    out, arm = tmp_path / "runs", tmp_path / "arm"
    for seed, rel in ((0, 0.006), (1, 0.007)):
        fake_run(out, "flare_elasticity", f"seed{seed}_full", rel, wall_s=1200)
    fake_run(arm, "flare_elasticity", "seed0_full", 0.0115, wall_s=600)
    launch = arm / "flare_elasticity" / "seed0_full" / "launch.json"
    record = json.loads(launch.read_text())
    record["attempts"][0]["command"] = ["flare", "fit", "--trainer.precision=bf16-mixed"]
    launch.write_text(json.dumps(record))
    records = tmp_path / "records"
    acc_collect.write_run_records(acc_collect.collect(out), out, records)
    text = page(acc_collect, acc_collect.collect(arm), arm, tmp_path)  # the arm's collect, into the same records
    assert sorted(p.name for p in (records / "accuracy").iterdir()) == [
        "flare_elasticity_seed0_full_32-true.json", "flare_elasticity_seed0_full_bf16-mixed.json",
        "flare_elasticity_seed1_full_32-true.json"]
    cell = next(line for line in text.split("## Full budget")[1].splitlines() if line.startswith("| FLARE |"))
    assert ("**6.50** (6.00-7.00, 2 seeds; 32-true; 20 min each; unknown commit)<br>"
            "**11.50** (bf16-mixed; 10 min; unknown commit)") in cell
    table = text.split("## One model and data set at several precisions")[1].split("## Runs")[0]
    assert "| FLARE | elasticity | full | 32-true | 6.50 | 6.00-7.00 | 2 | 1.00x | unknown commit |" in table
    assert "| FLARE | elasticity | full | bf16-mixed | 11.50 | - | 1 | 1.77x | unknown commit |" in table
    assert acc_collect.precision_slug("bf16-mixed, fp32 mixer+residual") == "bf16-mixed-fp32-mixer-residual"


def test_a_page_without_two_precisions_of_a_cell_has_no_comparison(acc_collect, tmp_path):
    out = tmp_path / "runs"
    fake_run(out, "flare_darcy", "seed0_full", 0.004, wall_s=1800)
    assert "several precisions" not in page(acc_collect, acc_collect.collect(out), out, tmp_path)


def collect_args(tmp_path: Path, out: Path) -> list[str]:
    """``collect`` into ``tmp_path``: records, the two pages, no README."""
    return ["collect", "--out", str(out), "--records", str(tmp_path / "records"), "--output",
            str(tmp_path / "ACCURACY.md"), "--results", str(tmp_path / "RESULTS.md"), "--readme", "", "--docs", ""]


def test_collect_writes_a_record_per_run_and_the_page(accuracy, tmp_path):
    out = tmp_path / "runs"
    fake_run(out, "perceiverio_elasticity", "seed2_full", 0.009, wall_s=7200)
    accuracy.main(collect_args(tmp_path, out))
    text = (tmp_path / "ACCURACY.md").read_text()
    assert "| PerceiverIO | elasticity | full | 2 | 32-true | 9.0000e-03 | 2.0 h | 2.0 h |" in text
    path = tmp_path / "records" / "accuracy" / "perceiverio_elasticity_seed2_full_32-true.json"
    assert json.loads(path.read_text())["rows"][0]["rel_l2"] == 0.009
    (out / "perceiverio_elasticity" / "seed2_full" / "test_metrics.json").write_text(json.dumps({"test/rel_l2": 0.008}))
    accuracy.main(collect_args(tmp_path, out))  # collected again: the run's record is replaced
    assert [p.name for p in (tmp_path / "records" / "accuracy").iterdir()] == [path.name]
    assert json.loads(path.read_text())["rows"][0]["rel_l2"] == 0.008
    assert "8.0000e-03" in (tmp_path / "ACCURACY.md").read_text()
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary file left behind


def test_the_page_puts_the_notes_under_the_tables(acc_collect, tmp_path):
    out = tmp_path / "runs"
    fake_run(out, "flare_darcy", "seed0_full", 0.004, wall_s=1800)
    text = page(acc_collect, acc_collect.collect(out), out, tmp_path, notes="- FLARE's run was **bf16**.\n")
    assert text.index("## Runs") < text.index("## Notes on the runs") < text.index("- FLARE's run was **bf16**.")
    assert "Notes on the runs" not in page(acc_collect, acc_collect.collect(out), out, tmp_path)


def test_worker_records_attempts_and_skips_finished_runs(acc_runs, acc_launch, tmp_path):
    out = tmp_path / "runs"
    run = acc_runs.Run("flare", "quickstart", 0, 1, out)
    queue = {"runs": [{"model": "flare", "dataset": "quickstart", "seed": 0, "epochs": 1, "out": str(out)}],
             "fast_step": False, "extra": [], "commit": "abc1234", "log_dir": str(tmp_path)}
    (tmp_path / "queue.json").write_text(json.dumps(queue))
    script = ("import json, pathlib, sys; p = pathlib.Path(sys.argv[1]); p.mkdir(parents=True, exist_ok=True); "
              "(p / 'test_metrics.json').write_text(json.dumps({'test/rel_l2': 0.5})); print('trained')")
    fake = [sys.executable, "-c", script, str(run.folder)]
    with mock.patch.object(acc_runs.Run, "command", return_value=fake) as command, \
            mock.patch.object(acc_launch, "card_name", return_value="NVIDIA H200"):
        acc_launch.worker(tmp_path / "queue.json")
        acc_launch.worker(tmp_path / "queue.json")  # finished now: skipped
    assert command.call_count == 1
    record = json.loads((run.folder / "launch.json").read_text())
    assert (record["card"], record["commit"], record["seed"], record["epochs"]) == ("NVIDIA H200", "abc1234", 0, 1)
    assert len(record["attempts"]) == 1 and record["attempts"][0]["rc"] == 0 and record["attempts"][0]["wall_s"] > 0
    assert "trained" in (tmp_path / "flare_quickstart_seed0_ep1.log").read_text()


def test_an_attempt_is_recorded_before_its_run_and_untimed_ones_are_marked(acc_runs, acc_launch, acc_collect, tmp_path, monkeypatch):
    """A worker killed with its machine leaves an attempt without an end. The next attempt opens
    with a marker line in the log and beats a heartbeat into launch.json while it runs; the table
    counts the lost attempt by its epoch times in the log and says the total is a lower bound."""
    monkeypatch.setattr(acc_launch, "HEARTBEAT_S", 0.05)
    out = tmp_path / "runs"
    run = acc_runs.Run("flare", "darcy", 0, 50, out)
    queue = {"runs": [{"model": "flare", "dataset": "darcy", "seed": 0, "epochs": 50, "out": str(out)}],
             "fast_step": False, "extra": [], "commit": "abc1234", "log_dir": str(tmp_path)}
    (tmp_path / "queue.json").write_text(json.dumps(queue))
    run.folder.mkdir(parents=True)
    (run.folder / "launch.json").write_text(json.dumps({"attempts": [  # as an older worker left it
        {"start": 0.0, "end": None, "wall_s": None, "rc": None, "command": ["flare", "fit"]}],
        "commit": "old0000", "card": "NVIDIA H200"}))
    log = tmp_path / "flare_darcy_seed0_ep50.log"  # the lost attempt's log has no marker (older worker)
    log.write_text("Seed set to 0\nepoch 1/50  val/loss 0.9  val/rel_l2 0.6  (65.2 s, peak 0.86 GB)\n"
                   "epoch 2/50  train/rel_l2 0.9  val/loss 0.8  val/rel_l2 0.5  (3.1 s)\n")
    # The run copies launch.json as it is while the run goes, sleeps past a few heartbeats, then finishes.
    script = ("import json, pathlib, shutil, sys, time; p = pathlib.Path(sys.argv[1]); "
              "shutil.copy(p / 'launch.json', p / 'seen.json'); time.sleep(0.4); "
              "(p / 'test_metrics.json').write_text(json.dumps({'test/rel_l2': 0.006})); print('epoch 3/50  (4.0 s)')")
    with mock.patch.object(acc_runs.Run, "command", return_value=[sys.executable, "-c", script, str(run.folder)]), \
            mock.patch.object(acc_launch, "card_name", return_value="NVIDIA H200"):
        acc_launch.worker(tmp_path / "queue.json")
    seen = json.loads((run.folder / "seen.json").read_text())["attempts"][-1]
    assert seen["start"] > 0 and seen["end"] is None and seen["rc"] is None
    attempts = json.loads((run.folder / "launch.json").read_text())["attempts"]
    assert len(attempts) == 2 and attempts[1]["rc"] == 0 and attempts[1]["wall_s"] >= 0.4
    assert attempts[1]["start"] < attempts[1]["last_seen"] <= attempts[1]["end"]
    text = log.read_text()
    assert text.count(acc_launch.ATTEMPT_MARK) == 1 and f"{acc_launch.ATTEMPT_MARK}2 at " in text
    assert acc_collect.epoch_seconds_per_attempt(text, 2) == pytest.approx([68.3, 4.0])
    # collect reads the log where a launch keeps it, <out>/logs
    (out / "logs").mkdir()
    log.rename(out / "logs" / log.name)
    (result,) = acc_collect.collect(out)
    assert result.attempts == 2 and result.untimed_attempts == 1
    assert result.wall_s == pytest.approx(68.3 + attempts[1]["wall_s"])
    assert [a["commit"] for a in attempts] == ["old0000", "abc1234"]  # each attempt keeps its own code
    assert (result.commit, result.card) == ("old0000, then abc1234", "NVIDIA H200")
    assert "2 attempts (1 without a recorded end: a lower bound)" in page(acc_collect, [result], out, tmp_path)
    record = json.loads((tmp_path / "records" / "accuracy" / "flare_darcy_seed0_ep50_32-true.json").read_text())
    assert record["commit"] == "old0000" and record["rows"][0]["commits"] == ["old0000", "abc1234"]


def test_time_of_attempts_without_an_end(acc_collect):
    """Recorded wall time first, else the last heartbeat, else the epoch times of the log."""
    ended = {"start": 0.0, "wall_s": 100.0}
    beat = {"start": 1000.0, "wall_s": None, "last_seen": 1060.0}
    lost = {"start": 2000.0, "wall_s": None}
    assert acc_collect.timed_seconds([ended, beat]) == 160.0
    assert acc_collect.timed_seconds([ended, lost]) == 100.0
    assert acc_collect.timed_seconds([ended, beat, lost], [99.0, 5.0, 30.0]) == 190.0  # wall_s and heartbeat win
    assert acc_collect.timed_seconds([lost]) is None and acc_collect.timed_seconds([lost], [0.0]) is None
    assert acc_collect.timed_seconds([]) is None


def test_epoch_seconds_split_by_attempt_markers(acc_launch, acc_collect):
    mark = acc_launch.ATTEMPT_MARK
    log = (f"{mark}1 at t\nepoch 1/9  val/rel_l2 0.5  (10.5 s, peak 1 GB)\nepoch 2/9  (2 s)\n"
           f"{mark}2 at t\nSeed set to 0\nTraceback...\n"
           f"{mark}3 at t\nepoch 3/9  train/rel_l2 0.1  (3.25 s)\nepoch 3/9 is not a summary line\n")
    assert acc_collect.epoch_seconds_per_attempt(log, 3) == pytest.approx([12.5, 0.0, 3.25])
    assert acc_collect.epoch_seconds_per_attempt(log, 2) is None  # attempts and log disagree: unknown
    assert acc_collect.epoch_seconds_per_attempt("epoch 1/9  (7 s)\n" + f"{mark}2 at t\n", 2) == pytest.approx([7.0, 0.0])


def test_runs_in_progress_are_listed_with_their_progress(acc_collect, tmp_path):
    """A run whose machine went away mid-training is not a failure: collect's status says how far it
    got (epochs with validation, best validation error so far); it has no record yet."""
    out = tmp_path / "runs"
    fake_run(out, "flare_darcy", "seed0_full", False)
    folder = out / "flare_darcy" / "seed0_full"
    (folder / "launch.json").write_text(json.dumps({"attempts": [{"start": 0.0, "end": None, "wall_s": None,
        "rc": None, "last_seen": 600.0, "command": ["flare", "fit", "--trainer.precision", "bf16-mixed"]}],
        "epochs": None, "card": "NVIDIA H200", "commit": "abc1234"}))
    (folder / "metrics.csv").write_text("epoch,step,train/loss,train/rel_l2,val/loss,val/rel_l2\n"
                                        "0,499,,,0.9,0.60\n0,499,0.99,0.99,,\n1,999,,,0.5,0.30\n"
                                        "1,999,0.5,0.5,,\n2,1499,,,0.6,0.35\n2,1499,0.4,0.4,,\n")
    fake_run(out, "transolver_darcy", "seed0_full", 0.02, wall_s=60)  # finished: not in progress
    fake_run(out, "perceiverio_darcy", "seed0_full", False, wall_s=60)  # exit 0 without metrics: not running
    running = acc_collect.in_progress(out)
    assert [(r.model, r.epochs_done, r.max_epochs, r.best_val, r.wall_s, r.precision) for r in running] == [
        ("flare", 3, 500, 0.30, 600.0, "bf16-mixed")]
    text = page(acc_collect, acc_collect.collect(out), out, tmp_path)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.split("## Runs")[0].splitlines()
            if line.startswith("| ")}
    assert rows["FLARE"][1] == "not run"  # no record until it is tested
    assert rows["Transolver"][1] == "**20.00** (bf16-mixed; 1 min; unknown commit)" and rows["PerceiverIO"][1] == "not run"
    section = acc_collect.status(out, [], running)
    assert section.startswith("Runs in progress")
    assert "| FLARE | darcy | full | 0 | bf16-mixed | 3/500 | 3.0000e-01 | 10 min (at least) | NVIDIA H200 | abc1234 |" in section


def test_workers_keep_the_callers_python_path(acc_launch, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/opt/wheels")
    assert acc_launch.python_path().split(":") == [str(REPO), "/opt/wheels"]


def test_workers_share_the_cpu_cores(acc_launch, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    envs = [acc_launch.worker_env(["0", "0", "1"], slot, cpus=32) for slot in range(3)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "0", "1"]
    assert {e["OMP_NUM_THREADS"] for e in envs} == {"10"}
    assert acc_launch.worker_env(["0"] * 64, 0, cpus=32)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the caller's choice wins
    assert acc_launch.worker_env(["0", "1"], 1, cpus=32)["OMP_NUM_THREADS"] == "3"


def test_prepare_data_makes_and_caches_a_dataset(acc_launch, tmp_path):
    root = tmp_path / "qs"
    acc_launch.prepare_data(["quickstart"], (f"--data.init_args.root={root}", "--data.init_args.n_train=6",
                                           "--data.init_args.n_val=2", "--data.init_args.n_test=3"))
    assert (root / "darcy_gen_r21_train.mat").is_file() and (root / "darcy_gen_r21_test.mat").is_file()
    assert list((root / "processed").rglob("*.pt"))  # processed caches exist before the workers start


def test_failed_runs_are_shown_with_their_reason(acc_collect, tmp_path):
    """A run that diverged (exit 1, no test metrics) is not silently dropped: collect's status gives
    its exit code and the log's error line; the page, made of records, shows finished runs only."""
    out = tmp_path / "runs"
    fake_run(out, "flare_elasticity", "seed0_full", 0.0114, wall_s=1011)
    fake_run(out, "transolver_elasticity", "seed0_full", False, wall_s=330)
    record = out / "transolver_elasticity" / "seed0_full" / "launch.json"
    data = json.loads(record.read_text())
    data["attempts"][-1]["rc"] = 1
    record.write_text(json.dumps(data))
    fake_run(out, "transformer_elasticity", "seed0_full", False, wall_s=10)  # exit 0, no metrics: not a failure
    (out / "logs").mkdir()
    (out / "logs" / "transolver_elasticity_seed0_full.log").write_text(
        "epoch 85/500 ...\nTraceback (most recent call last):\n  File x\n"
        "flare_lightning.callbacks.finite_loss.NonFiniteLossError: the validation loss (val/loss) is nan at epoch 85\n")
    failed = acc_collect.failures(out)
    assert [(f.model, f.dataset, f.rc, f.precision) for f in failed] == [("transolver", "elasticity", 1, "bf16-mixed")]
    assert failed[0].reason == "NonFiniteLossError: the validation loss (val/loss) is nan at epoch 85"
    text = page(acc_collect, acc_collect.collect(out), out, tmp_path)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.split("## Runs")[0].splitlines()
            if line.startswith("| ")}
    elasticity = 3  # model, Darcy, paper Darcy, elasticity
    assert rows["FLARE"][elasticity] == "**11.40** (32-true; 17 min; unknown commit)"
    assert rows["Transolver"][elasticity] == rows["Transformer"][elasticity] == "not run"
    section = acc_collect.status(out, failed, [])
    assert section.startswith("Failed runs")
    assert "| Transolver | elasticity | full | 0 | bf16-mixed | 1 | NonFiniteLossError: the validation loss" in section


@pytest.mark.slow
def test_a_ddp_launch_trains_two_processes_end_to_end(accuracy, acc_runs, tmp_path):
    """``--devices 0,1`` through the real worker on the CPU (gloo): Lightning re-launches
    ``python -m flare_lightning fit`` as rank 1, the run is tested and recorded as a 2-GPU run."""
    out = tmp_path / "runs"
    accuracy.main(["launch", "--wait", "--devices", "0,1", "--models", "transformer", "--datasets", "quickstart",
                   "--epochs", "1", *collect_args(tmp_path, out)[1:],
                   "--", f"--data.init_args.root={tmp_path / 'data'}", "--data.init_args.n_train=8",
                   "--data.init_args.n_val=4", "--data.init_args.n_test=4", "--model.model.init_args.channels=16",
                   "--model.model.init_args.num_blocks=2", "--model.model.init_args.num_heads=2",
                   "--trainer.accelerator=cpu"])
    folder = out / "transformer_quickstart" / "seed0_ep1"
    log = (out / "logs" / "transformer_quickstart_seed0_ep1.log").read_text()
    assert "Starting with 2 processes" in log
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert int(saved["trainer"]["devices"]) == 2 and saved["data"]["init_args"]["batch_size"] == 2  # the config's 4, split
    record = json.loads((folder / "launch.json").read_text())
    assert record["attempts"][-1]["rc"] == 0 and record["card"].startswith("2 x ")
    assert acc_runs.finished(folder)
    assert json.loads((tmp_path / "records" / "accuracy" / "transformer_quickstart_seed0_ep1_32-true.json").read_text())["card"] == record["card"]


def test_each_precision_arm_is_a_flare_fit_of_its_own_label(acc_runs, acc_collect, tmp_path):
    """``--arms``: every arm's overrides parse as `flare fit` options and set what the arm is named
    for; the arms' precision labels (their record names) all differ; a launch's own overrides
    come after the arm's, so they win."""
    from flare_lightning.models.precision import FP32_PARTS
    from tests.helpers import resolved_config

    assert {a.removeprefix("bf16-fp32") for a in acc_runs.ARMS if a.startswith("bf16-fp32") and "tf32" not in a} == set(FP32_PARTS)
    runs = acc_runs.plan(["flare"], ["elasticity"], [0], 5, tmp_path, list(acc_runs.ARMS))
    assert [r.folder for r in runs] == [tmp_path / arm / "flare_elasticity" / "seed0_ep5" for arm in acc_runs.ARMS]
    labels = [acc_collect.run_precision(r.command()) for r in runs]
    assert len(set(labels)) == len(acc_runs.ARMS), labels
    for arm, run in zip(acc_runs.ARMS, runs):
        config = resolved_config(run.command()[4:])
        precision, matmul = config["trainer"]["precision"], config["float32_matmul_precision"]
        parts = config["model"]["model"]["init_args"]["fp32_parts"]
        assert precision == ("32-true" if arm.startswith("32") else "16-mixed" if arm == "fp16" else "bf16-mixed"), arm
        assert (matmul == "high") == arm.endswith("tf32"), arm
        assert parts == ([arm.removeprefix("bf16-fp32").removesuffix("-tf32")] if arm.startswith("bf16-fp32") else None), arm
    last = runs[0].command(extra=("--trainer.precision=bf16-mixed",))
    assert resolved_config(last[4:])["trainer"]["precision"] == "bf16-mixed"
    with pytest.raises(ValueError, match="unknown arm"):
        acc_runs.plan(["flare"], ["elasticity"], [0], 5, tmp_path, ["bf8"])
    with pytest.raises(ValueError, match="--models flare only"):
        acc_runs.plan(["flare", "transolver"], ["elasticity"], [0], 5, tmp_path, ["bf16", "bf16-fp32kv"])


def test_one_launch_runs_the_arms_side_by_side_and_collect_finds_each(accuracy, acc_runs, acc_launch, tmp_path):
    """The workers of one launch take the arms' runs (each with its overrides and its log in
    ``<out>/<arm>/logs``); ``collect --out <out>`` records every arm's finished run."""
    out = tmp_path / "runs"
    with mock.patch.object(acc_launch, "prepare_data"), mock.patch.object(acc_launch, "git_commit", return_value="abc1234"), \
            mock.patch.object(acc_launch.subprocess, "Popen") as popen:
        accuracy.main(["launch", "--models", "flare", "--datasets", "quickstart", "--epochs", "1", "--devices", "0", "0",
                       "--arms", "32-true", "bf16-fp32mixer", "--out", str(out), "--", "--trainer.max_epochs=1"])
    assert popen.call_count == 2  # one worker per --devices entry
    queues = [json.loads(p.read_text()) for p in sorted((out / "logs").glob("queue_*.json"))]
    items = [item for q in queues for item in q["runs"]]
    assert sorted(item["log_dir"] for item in items) == [str(out / "32-true" / "logs"), str(out / "bf16-fp32mixer" / "logs")]
    # a worker runs an item with the arm's overrides, logging in the arm's folder
    item = next(i for i in items if "bf16-fp32mixer" in i["out"])
    queue = tmp_path / "queue.json"
    queue.write_text(json.dumps({**queues[0], "runs": [item]}))

    def command(self, *args, **kwargs):  # stands in for `flare fit`: writes the run's test metrics
        script = ("import json, pathlib, sys; p = pathlib.Path(sys.argv[1]); p.mkdir(parents=True, exist_ok=True); "
                  "(p / 'test_metrics.json').write_text(json.dumps({'test/rel_l2': 0.25}))")
        return [sys.executable, "-c", script, str(self.folder)]

    real = acc_runs.Run.command
    wanted = real(acc_runs.Run(item["model"], item["dataset"], item["seed"], item["epochs"], Path(item["out"]),
                               tuple(item["extra"])), False, ("--trainer.max_epochs=1",))
    assert "--model.model.init_args.fp32_parts=[mixer]" in wanted and wanted[-1] == "--trainer.max_epochs=1"
    with mock.patch.object(acc_runs.Run, "command", command), mock.patch.object(acc_launch, "card_name", return_value="cpu"):
        acc_launch.worker(queue)
    assert (out / "bf16-fp32mixer" / "logs" / "flare_quickstart_seed0_ep1.log").is_file()
    record = json.loads((out / "bf16-fp32mixer" / "flare_quickstart" / "seed0_ep1" / "launch.json").read_text())
    record["attempts"][0]["command"] = wanted  # what the worker ran, had the command not been faked
    (out / "bf16-fp32mixer" / "flare_quickstart" / "seed0_ep1" / "launch.json").write_text(json.dumps(record))
    fake_run(out / "32-true", "flare_quickstart", "seed0_ep1", 0.5, wall_s=60)
    accuracy.main(collect_args(tmp_path, out))
    assert sorted(p.name for p in (tmp_path / "records" / "accuracy").iterdir()) == [
        "flare_quickstart_seed0_ep1_32-true.json", "flare_quickstart_seed0_ep1_bf16-mixed-fp32-mixer.json"]
