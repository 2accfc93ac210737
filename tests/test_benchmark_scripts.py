"""The GPU benchmark scripts' CPU-side logic: what the tile sweep would try."""

from __future__ import annotations

import json

import pytest

from tests.helpers import import_benchmark


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


def test_train_step_rows_record_their_speed_up_and_measured_paths():
    """Each FLARE row's speed-up is over the reference row of its own dataset and precision; the
    record measures the package, the data code and exactly the configs the rows train."""
    small = import_benchmark("train_step_small")
    rows = [{"dataset": d, "precision": "bf16-mixed", "row": r, "step_ms": ms}
            for d, r, ms in (("darcy", "reference-compiled", 80.0), ("darcy", "ours-fast", 5.0),
                             ("elasticity", "reference-compiled", 60.0), ("elasticity", "ours-fast", 3.0),
                             ("darcy", "transformer-fast", 4.0))]
    small.add_speedups(rows)
    assert [r.get("speedup_vs_reference_compiled") for r in rows] == [1.0, 16.0, 1.0, 20.0, None]
    paths = small.measured_paths(["darcy"], ["ours-fast", "transformer-fast", "reference-compiled"])
    assert paths == ["flare_lightning/", "datamodules/", "configs/baselines/transformer_darcy.yaml",
                     "configs/darcy.yaml", "benchmarks/reference_flare.py"]


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
    assert max(r["processes"] for r in record["rows"][2:]) == 2  # the main process and its one worker
    assert len(list((tmp_path / "set" / "processed").glob("drivaermldataset_*/run_*.pt"))) == 0
    assert len(list((tmp_path / "set" / "processed").glob("drivaermldataset_*/*run_*.npz.pt"))) == 5
    env = record["environment"]
    assert env["train_runs_per_s"] > 0 and env["one_worker_s_per_run"] > 0 and "synthetic" in env["data"]
    (written,) = out.glob("*.json")
    assert json.loads(written.read_text())["rows"] == record["rows"]
