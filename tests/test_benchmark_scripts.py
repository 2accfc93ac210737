"""The GPU benchmark scripts' CPU-side logic: what the tile sweep would try."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, import_benchmark


@pytest.fixture(scope="module")
def mixer_tune():
    return import_benchmark("mixer_tune")


@pytest.mark.parametrize("m,d", [(64, 8), (128, 16), (256, 16), (40, 12)])
def test_tune_variants_start_from_the_default_and_fit_m(mixer_tune, m, d):
    pytest.importorskip("triton")
    from flare_lightning.kernels.triton_mixer import _pow2, default_config

    variants = mixer_tune.variants(m, d)
    assert variants[0] == default_config(m, d)
    assert len(set(variants)) == len(variants) > 4
    for cfg in variants:
        for role in mixer_tune.ROLES:
            kc = getattr(cfg, role)
            assert kc.block_m <= max(_pow2(m), 16) and kc.block_m & (kc.block_m - 1) == 0
            assert kc.block_n >= 16 and kc.num_warps in (4, 8)


def test_tune_variants_of_the_fp32_mixer_start_from_its_default(mixer_tune):
    pytest.importorskip("triton")
    import torch

    from flare_lightning.kernels.triton_mixer import default_config

    variants = mixer_tune.variants(256, 4, torch.float32)
    assert variants[0] == default_config(256, 4, torch.float32)
    assert len(set(variants)) == len(variants) > 4


def test_nccl_memory_runs_each_setting_with_exactly_its_variables(monkeypatch):
    """Dry run (gloo): every setting's processes see its NCCL variables and no others, also
    when the caller's environment sets some of them."""
    nccl_memory = import_benchmark("nccl_memory")
    monkeypatch.setenv("NCCL_PROTO", "LL")
    settings = ["nccl-default", "small + simple protocol"]
    rows = nccl_memory.main(["--dry-run", "--settings", *settings])
    assert list(rows) == settings
    for name, row in rows.items():
        assert row["env"] == nccl_memory.SETTINGS[name], name
        assert row["drop_gb"] == 0.0  # no device memory on the CPU


def test_train_step_rows_train_the_right_model_and_mask():
    """Every row of train_step_small.py has a config on both datasets; baseline rows train
    the baseline's config; the ``-masked`` rows hand the all-True mask to the network."""
    from unittest import mock

    import torch

    from flare_lightning.training.module import SurrogateModule

    small = import_benchmark("train_step_small")
    for dataset in ("darcy", "elasticity"):
        for row in small.ROWS:
            paths = small.row_configs(dataset, row)
            assert all(p.is_file() for p in paths), (dataset, row)
            model = small.BASELINE_ROWS.get(row)
            assert [p.name for p in paths] == [f"{dataset}.yaml", *([f"{model}_{dataset}.yaml"] if model else [])], row
    batch = {"mask": torch.ones(2, 5, dtype=torch.bool), "padded": False}
    assert SurrogateModule.network_mask(batch) is None
    for target, value in small.PATCHES["transformer-fast-masked"].items():
        with mock.patch(target, value):
            assert SurrogateModule.network_mask(batch) is batch["mask"]
    assert SurrogateModule.network_mask(batch) is None  # the patch is undone


def test_train_step_row_patches_name_existing_switches():
    """Every module constant a row patches exists as named (a misspelt path would time the default)."""
    from unittest import mock

    pytest.importorskip("triton")
    small = import_benchmark("train_step_small")
    for row, patches in small.PATCHES.items():
        assert row in small.ROWS, row
        for target, value in patches.items():
            with mock.patch(target, value):  # mock refuses an attribute that is not there
                pass


def test_train_step_precision_labels_are_options_flare_fit_accepts():
    """Each --precisions label of train_step_small.py parses as flare fit arguments on the FLARE config."""
    from tests.helpers import resolved_config

    small = import_benchmark("train_step_small")
    for label, args in small.PRECISIONS.items():
        config = resolved_config(["--config=configs/darcy.yaml", *args])
        assert config["trainer"]["precision"] == args[0].split("=")[1], label
        parts = config["model"]["model"]["init_args"].get("fp32_parts")
        assert (parts == ["mixer"]) == ("fp32mixer" in label), label


def test_train_step_rows_record_their_speed_up_and_measured_paths():
    """Each FLARE row's speed-up is over the reference row of its own dataset and precision; the
    record measures the package, the data code and exactly the configs the rows train."""
    small = import_benchmark("train_step_small")
    rows = [{"dataset": d, "precision": "bf16-mixed", "row": r, "step_ms": ms}
            for d, r, ms in (("darcy", "reference-compiled", 80.0), ("darcy", "ours-fast", 5.0),
                             ("elasticity", "reference-compiled", 60.0), ("elasticity", "ours-fast", 3.0),
                             ("darcy", "transformer-fast", 4.0), ("drivaerml_1m", "reference-compiled", 440.0),
                             ("drivaerml_1m", "reference-m128-compiled", 300.0), ("drivaerml_1m", "ours-fast", 110.0),
                             ("drivaerml_1m", "ours-m128-fast", 75.0))]
    small.add_speedups(rows)
    assert [r.get("speedup_vs_reference_compiled") for r in rows] == [1.0, 16.0, 1.0, 20.0, None, 1.0, 1.0, 4.0, 4.0]
    paths = small.measured_paths(["darcy"], ["ours-fast", "transformer-fast", "reference-compiled"])
    assert paths == ["flare_lightning/", "datamodules/", "configs/baselines/transformer_darcy.yaml",
                     "configs/darcy.yaml", "benchmarks/reference_flare.py"]


def test_train_step_peak_reads_the_gpu_not_the_models_device(monkeypatch):
    """After a fit Lightning moves the model to the CPU: the row's peak is read from the current CUDA
    device (the model's device gave 0.0 GB for every row at 77fe692)."""
    small = import_benchmark("train_step_small")
    seen = []
    monkeypatch.setattr(small.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(small.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(small, "peak_memory_bytes", lambda device: seen.append(device) or 23.5e9)
    assert small.gpu_peak_gb() == 23.5 and seen == [small.torch.device("cuda", 0)]


def test_train_step_timing_keeps_the_epochs_first_step_apart():
    """The first step of an epoch also waits for the loader workers' first batch: the step time is
    that of the steps after it, the epoch adds both; the timer marks them in a real fit."""
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    small = import_benchmark("train_step_small")
    marks = {(1, "start"): (10.0, 5), (1, "first"): (10.5, 6), (1, "val_start"): (10.9, 10), (1, "val_end"): (11.4, 10)}
    figures = small.epoch_figures(marks, batches=5)
    assert figures["step_ms"] == pytest.approx(100.0) and figures["first_step_ms"] == pytest.approx(500.0)
    assert figures["epoch_s"] == pytest.approx(0.5 + 4 * 0.1 + 0.5) and figures["steps_timed"] == 4
    timer = small.EpochTimer()
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=[timer], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(BoringModel())
    steps = {k: g for (epoch, k), (_, g) in timer.marks.items() if epoch == 1}
    assert steps == {"start": 3, "first": 4, "val_start": 6, "val_end": 6, "end": 6}
    assert small.epoch_figures(timer.marks, batches=3)["steps_timed"] == 2


def test_step_rows_name_their_options_and_ratios():
    from benchmarks.step import add_ratios, options

    assert options("ours-memory") == "checkpoint_blocks, mlp_chunk_size=262144"
    assert (options("ours-fast"), options("reference-compiled")) == ("(none)", "paper formulation, torch.compile")
    rows = add_ratios([{"config": "reference", "ms": 500.0, "peak_gb": 40.0},
                       {"config": "reference-compiled", "ms": 400.0, "peak_gb": 38.0},
                       {"config": "ours-memory", "ms": 250.0, "peak_gb": 4.0}, {"config": "broken", "error": "OOM"}])
    assert rows[2]["speedup_vs_reference"] == 2.0 and rows[2]["speedup_vs_reference_compiled"] == 1.6
    assert rows[2]["memory_vs_reference"] == 0.1 and "speedup_vs_reference" not in rows[3]


@pytest.mark.slow
def test_drivaerml_memory_measures_every_phase_and_writes_a_record(tmp_path):
    """benchmarks/drivaerml_memory.py on a tiny set: the first start builds every run's cache,
    each phase has a peak, the record names card, commit, command and data."""
    memory = import_benchmark("drivaerml_memory")
    out = tmp_path / "records"
    record = memory.main(["--root", str(tmp_path / "set"), "--runs", "3", "--points", "3000", "--train-points", "1000",
                          "--n-val", "1", "--workers", "1", "--out", str(out)])
    assert [r["phase"] for r in record["rows"]] == list(memory.PHASES)
    assert all(r["rss_gb"] >= r["pss_gb"] >= r["pss_anon_gb"] > 0 and r["processes"] >= 1 for r in record["rows"])
    # the processes that stay (the peak count may also catch one passing by: 3 in training, once in CI)
    assert record["rows"][2]["processes_end"] == 2  # training: the main process and its one worker
    assert record["rows"][3]["processes_end"] == 3  # validation: and the training worker, persistent as in a fit
    assert all(r["processes"] >= r["processes_end"] for r in record["rows"])
    assert len(list((tmp_path / "set" / "processed").glob("drivaermldataset_*/run_*.pt"))) == 0
    assert len(list((tmp_path / "set" / "processed").glob("drivaermldataset_*/*run_*.npz.pt"))) == 5
    env = record["environment"]
    assert env["train_runs_per_s"] > 0 and env["one_worker_s_per_run"] > 0 and "synthetic" in env["data"]
    (written,) = out.glob("*.json")
    assert json.loads(written.read_text())["rows"] == record["rows"]


def test_quickstart_recipes_run_each_recipe_on_its_own_variant_files(tmp_path):
    """A run's command sets every value of its recipe and reads its (variant, seed)'s own files,
    generated from seeds clear of the shipped 21x21 set's; file names never repeat across variants."""
    import argparse

    recipes = import_benchmark("quickstart_recipes")
    args = argparse.Namespace(epoch_scale=0.5, data=tmp_path / "data", runs=tmp_path / "runs", n_val=100, n_test=50)
    cmd = recipes.fit_command("n200-e54-lr2e-3", "c12", 1, args)
    for option in ("--data.init_args.n_train=200", "--trainer.max_epochs=27", "--model.lr=0.002",
                   "--model.weight_decay=1e-05", "--data.init_args.gen_resolution=21",
                   "--data.init_args.gen_permeability=[12.0,1.0]", "--data.init_args.gen_seed=102",
                   "--data.init_args.n_val=100", "--seed_everything=1", "--trainer.callbacks=[]"):
        assert option in cmd, option
    names = {(v, s): [a for a in recipes.fit_command("n400-e27-lr3e-3", v, s, args) if "_file=" in a or ".root=" in a]
             for v in recipes.VARIANTS for s in (0, 1, 2)}
    values = [a.split("=", 1)[1] for files in names.values() for a in files]
    assert len(values) == len(set(values)) == 3 * len(names)  # root, train and test file of each differ
    assert all(recipes.gen_seed(s) > 1 for s in range(3))
    assert {r.steps() for r in recipes.RECIPES.values()} == {2700}  # one time budget for all


def test_quickstart_recipes_rank_on_validation_never_test(tmp_path):
    """A run's row holds its best validation error (the checkpoint's) and its test error; the
    summary ranks recipes by mean validation error over every variant and seed."""
    recipes = import_benchmark("quickstart_recipes")
    run = tmp_path / "version_0"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,train/loss,val/rel_l2\n0,99,0.3,\n0,99,,0.2\n1,199,,0.05\n2,299,,0.07\n")
    (run / "test_metrics.json").write_text(json.dumps({"test/rel_l2": 0.06, "checkpoint": {}}))
    row = recipes.run_row("n600-e18-lr3e-3", "r32", 2, run, 123.44, 1.0)
    assert row == {"recipe": "n600-e18-lr3e-3", "variant": "32x32", "seed": 2, "val_rel_l2": 0.05,
                   "test_rel_l2": 0.06, "wall_s": 123.4, "steps": 2700}
    from benchmarks.sections import recipe_summary

    rows = [{"recipe": r, "variant": v, "seed": s, "val_rel_l2": val + 0.001 * s, "test_rel_l2": test, "wall_s": 10.0}
            for r, val, test in (("a", 0.05, 0.01), ("b", 0.04, 0.09)) for v in ("16x16", "32x32") for s in (0, 1)]
    summary = recipe_summary(rows)
    assert [(s["recipe"], s["variant"], s["rank"]) for s in summary] == [
        ("b", "16x16", None), ("b", "32x32", None), ("b", "all", 1),
        ("a", "16x16", None), ("a", "32x32", None), ("a", "all", 2)]
    best = summary[2]
    assert best["runs"] == 4 and best["val"] == pytest.approx((0.0405, 0.000577), rel=1e-3)
    assert best["test"] == (0.09, 0.0) and best["variants"] == "16x16 / 32x32; seeds 0, 1"
    assert best["ranking"] == [("b", pytest.approx(0.0405)), ("a", pytest.approx(0.0505))] and summary[0]["ranking"] is None


def test_quickstart_recipes_join_an_earlier_record_of_the_same_settings(tmp_path):
    """--rows-from keeps the earlier runs this sweep does not repeat, and refuses other settings."""
    import argparse

    from benchmarks.records import make_record

    recipes = import_benchmark("quickstart_recipes")
    env = {"epoch_scale": 1.0, "n_val": 100, "n_test": 50}
    rows = [{"recipe": "n400-e27-lr3e-3", "variant": "16x16", "seed": s, "val_rel_l2": 0.03} for s in (0, 1)]
    rec = make_record("quickstart_recipes", rows, paths=["datamodules/"], card="cpu", command="c", commit=("abc", False),
                      versions={}, environment=env)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rec))
    args = argparse.Namespace(recipes=["n400-e27-lr3e-3"], variants=["r16"], seeds=[1, 2], **env)
    joined, note = recipes.earlier_rows(path, args)
    assert joined == rows[:1] and note["commit"] == "abc" and note["rows"] == 1
    with pytest.raises(SystemExit, match="not a quickstart_recipes record with"):
        recipes.earlier_rows(path, argparse.Namespace(**{**vars(args), "epoch_scale": 0.5}))


QUICKSTART_GATE = {"wall_s": 240.0, "rel_l2": 0.035}  # its promise on its own 21x21 set, idle 2-core machine


def shippable(ranking: list[str], timing_rows: list[dict]) -> str:
    """The recipe the quickstart ships: the first of ``ranking`` (by mean validation error on the
    variants) that no quickstart timing row of its name shows missing the gate; a recipe without
    such a row is not known to miss it."""
    missed = {r["recipe"] for r in timing_rows
              if (r.get("wall_s") or 0) > QUICKSTART_GATE["wall_s"] or (r.get("rel_l2") or 0) >= QUICKSTART_GATE["rel_l2"]}
    return next(name for name in ranking if name not in missed)


def test_the_quickstart_ships_the_best_recipe_on_the_variants_that_keeps_its_promise():
    """configs/quickstart.yaml trains the first recipe by mean validation error over the variants
    of the newest quickstart_recipes record whose own quickstart timing (benchmarks/quickstart_time.py)
    did not miss the gate; the shipped config's newest timing keeps it; the README headline shows
    that recipe."""
    from benchmarks import render
    from benchmarks.records import RECORDS, read_records
    from benchmarks.sections import recipe_summary
    from tests.helpers import CONFIGS, resolved_config

    assert shippable(["a", "b", "c"], [{"recipe": "a", "rel_l2": 0.036}, {"recipe": "b", "wall_s": 250}]) == "c"
    assert shippable(["a", "b"], [{"recipe": "shipped", "rel_l2": 0.05}]) == "a"
    records = list(read_records(RECORDS).values())
    sweeps = [r for r in records if r["benchmark"] == "quickstart_recipes"]
    if not sweeps:
        pytest.skip("no quickstart_recipes record")
    summary = recipe_summary(max(sweeps, key=lambda r: r["date"])["rows"])
    ranking = [s["recipe"] for s in sorted((s for s in summary if s["rank"]), key=lambda s: s["rank"])]
    timings = [r for r in records if r["benchmark"] == "quickstart"]
    chosen = shippable(ranking, [row for r in timings for row in r["rows"]])
    recipe = import_benchmark("quickstart_recipes").RECIPES[chosen]
    cfg = resolved_config([f"--config={CONFIGS / 'quickstart.yaml'}"])
    shipped = (cfg["data"]["init_args"]["n_train"], cfg["trainer"]["max_epochs"], cfg["model"]["lr"],
               cfg["model"]["weight_decay"], cfg["data"]["init_args"]["batch_size"])
    assert shipped == (recipe.n_train, recipe.epochs, recipe.lr, recipe.weight_decay, 4), chosen
    newest = max((r for r in timings if any(row["recipe"] == "shipped" for row in r["rows"])), key=lambda r: r["date"])
    row = next(row for row in newest["rows"] if row["recipe"] == "shipped")
    assert row["wall_s"] <= QUICKSTART_GATE["wall_s"] and row["rel_l2"] < QUICKSTART_GATE["rel_l2"]
    head = next(h for h in render.HEADLINES if h.benchmark == "quickstart_recipes")
    assert head.match == {"variant": "all", "recipe": chosen}


def test_quickstart_time_runs_the_shipped_command_in_a_fresh_folder_and_records_it(monkeypatch, tmp_path):
    """The timed command is the README's (shipped config, unchanged, from an empty folder); the
    record holds its steps, wall time and test error, and the load averages around it; a machine
    that never gets idle is refused instead of timed."""
    import subprocess
    from pathlib import Path

    import torch

    qt = import_benchmark("quickstart_time")
    calls = []

    real_run = subprocess.run

    def fake_fit(cmd, *args, cwd=None, **kw):
        if cmd[1:3] != ["-m", "flare_lightning"]:
            return real_run(cmd, *args, cwd=cwd, **kw)  # git, for the record's commit
        calls.append((cmd, cwd, sorted(p.name for p in Path(cwd).iterdir())))
        run = Path(cwd) / "runs" / "quickstart" / "version_0"
        (run / "checkpoints").mkdir(parents=True)
        torch.save({"epoch": 26, "global_step": 5400, "state_dict": {}, "pytorch-lightning_version": "2.6.0"},
                   run / "checkpoints" / "last.ckpt")
        (run / "test_metrics.json").write_text(json.dumps({"test/rel_l2": 0.0321}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    loads = iter([(0.2, 0.3, 0.4), (1.9, 1.2, 0.8)])
    monkeypatch.setattr(qt, "load_average", lambda: next(loads))
    monkeypatch.setattr(qt.subprocess, "run", fake_fit)
    qt.main(["--out", str(tmp_path)])
    (cmd, cwd, content), = calls
    assert cmd[1:] == ["-m", "flare_lightning", "fit", f"--config={qt.CONFIG}"] and content == []
    (path,) = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    assert record["rows"] == [{"recipe": "shipped", "steps": 5400, "wall_s": record["rows"][0]["wall_s"], "rel_l2": 0.0321}]
    assert record["environment"]["load_average_before"] == [0.2, 0.3, 0.4]
    assert record["environment"]["load_average_after"] == [1.9, 1.2, 0.8]

    monkeypatch.setattr(qt, "load_average", lambda: (3.0, 3.0, 3.0))
    monkeypatch.setattr(qt.time, "sleep", lambda s: None)
    with pytest.raises(SystemExit, match="not an idle machine"):
        qt.main(["--out", str(tmp_path), "--wait", "0"])



@pytest.mark.slow
def test_a_ddp_row_times_rank_zero_and_counts_every_gpus_samples(tiny_darcy_root, tmp_path, monkeypatch):
    """``--devices 2``: the row runs as a `flare fit` subprocess under DDP (here two CPU processes on
    the tiny Darcy set), rank 0's timer writes its marks, and the row has the figures of one GPU's
    row plus the GPUs and the samples per second over all of them; the 1M proxy's single validation
    run becomes one per GPU; rows that patch their process are refused."""
    from tests.helpers import CONFIGS, tiny_darcy_args

    small = import_benchmark("train_step_small")
    one = small.fit_args("drivaerml_1m", "bf16-mixed", "ours-eager", None, tmp_path)
    two = small.fit_args("drivaerml_1m", "bf16-mixed", "ours-eager", None, tmp_path, devices=2)
    assert small.n_val(one) == 1 and small.n_val(two) == 2 and [a for a in two if a not in one] == [
        "--trainer.logger.init_args.name=drivaerml_1m_ours-eager_bf16-mixed_2gpus", "--data.init_args.n_val=2"]
    assert small.n_val(small.fit_args("darcy", "bf16-mixed", "ours-eager", None, tmp_path, devices=2)) == 24
    with pytest.raises(ValueError, match="cannot run under DDP"):
        small.run_row_ddp("darcy", "bf16-mixed", "ours-fast-masked", None, tmp_path, 2)

    def tiny(dataset, precision, row, steps, root, devices=1):
        return [f"--config={CONFIGS / 'quickstart.yaml'}", *tiny_darcy_args(tiny_darcy_root), "--data.init_args.batch_size=2",
                "--trainer.accelerator=cpu", "--trainer.max_epochs=2", "--trainer.callbacks=[]", "--test_after_fit=false",
                f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}",
                "--trainer.enable_progress_bar=false", "--model.model.init_args.channels=8",
                "--model.model.init_args.num_blocks=1", "--model.model.init_args.num_latents=4"]

    monkeypatch.setattr(small, "fit_args", tiny)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    row = small.run_row_ddp("darcy", "32-true", "ours-eager", None, tmp_path, 2)
    # 8 training samples, batch 2 per rank, 2 ranks: 2 batches a rank, the second timed after the first
    assert (row["devices"], row["batches_per_epoch"], row["steps_timed"]) == (2, 2, 1)
    assert row["samples_per_s"] == pytest.approx(2 * 2 * 1e3 / row["step_ms"])
    assert row["val_s"] > 0 and row["epoch_s"] > row["first_step_ms"] / 1e3 and row["peak_gb"] is None
    small.add_speedups([row])
    assert small.throughput(1, 2, 4.0) == {"devices": 1, "samples_per_s": 500.0}


def test_eval_surface_times_flare_test_run_by_run_with_drag_and_lift(tmp_path):
    """benchmarks/eval_surface.py on CPU at a tiny size: the shipped 1M config's `flare test` reads each
    synthetic run (with normals and areas), evaluates it in chunks and integrates Cd/Cl; the record
    has one row with the runs timed."""
    import json

    evals = import_benchmark("eval_surface")
    tiny = ["--trainer.accelerator=cpu", "--trainer.precision=32-true", "--model.model.init_args.channels=8",
            "--model.model.init_args.num_blocks=1", "--model.model.init_args.num_heads=2",
            "--model.model.init_args.num_latents=4", "--model.model.init_args.eval_chunk_size=1024",
            "--model.model.init_args.compile=false", "--data.init_args.train_points=512", "--data.init_args.num_workers=0",
            "--data.init_args.persistent_workers=false", "--data.init_args.prefetch_factor=null"]
    row = evals.main(["--root", str(tmp_path / "set"), "--points", "3000", "--runs", "3", "--out", str(tmp_path / "rec"), "--", *tiny])
    assert (row["points"], row["runs"], row["chunk"], row["cd_cl_runs"]) == (3000, 3, 1024, 3)
    assert 0 < row["s_per_run"] and 0 < row["first_run_s"] and row["rel_l2"] > 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "rec").glob("*.json")]
    assert record["benchmark"] == "eval_surface" and record["rows"] == [row]
    assert sorted(p.name for p in (tmp_path / "set" / "test").glob("*.npz")) == ["run_3.npz", "run_4.npz", "run_5.npz"]

SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if '__name__ == "__main__"' in p.read_text())


def test_every_benchmark_script_runs_as_a_script_from_anywhere(tmp_path):
    """``python benchmarks/<script>.py --help`` from another folder, with nothing on PYTHONPATH (as in a
    fresh `pip install -e .` checkout): each script finds the `benchmarks.` modules it imports itself;
    ``accuracy.py collect`` also reaches its late imports (render, records)."""
    import os
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert len(SCRIPTS) >= 20
    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(SCRIPTS, pool.map(lambda s: run([str(REPO / "benchmarks" / s), "--help"]), SCRIPTS)))
    failed = {s: p.stderr.strip().splitlines()[-1:] for s, p in done.items() if p.returncode != 0 or "usage:" not in p.stdout}
    assert not failed, failed
    out = tmp_path / "pages"
    collect = run([str(REPO / "benchmarks" / "accuracy.py"), "collect", "--out", str(tmp_path / "none"),
                   "--records", str(out / "records"), "--output", str(out / "ACCURACY.md"), "--results",
                   str(out / "RESULTS.md"), "--readme", "", "--docs", ""])
    assert collect.returncode == 0, collect.stderr[-2000:]
    assert "0 finished runs" in collect.stdout and (out / "ACCURACY.md").is_file()
