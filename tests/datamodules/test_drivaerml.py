"""DrivAerML loader: the real npz (and vtp) layouts, splits, targets, normalisation,
padding invariance, the CLI, and a clear error for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.checks import DataFormatError
from datamodules.collate import PaddedCollate
from datamodules.drivaerml import DrivAerMLDataModule
from datamodules.drivaerml_io import Q_INF
from flare_lightning.models import FLARE
from tests import mesh_files
from tests.helpers import CONFIGS, run_cli, tiny_trainer_args

TRAIN_IDS, TEST_IDS = [1, 2, 3, 5, 8], [13, 21]


def run_arrays(run_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres (N, 3) and fields (N, 4) of a fake run; N and values depend on the id."""
    rng = np.random.default_rng(run_id)
    n = 20 + 3 * run_id
    centres = rng.uniform(-1, 4, size=(n, 3)).astype(np.float32)
    fields = np.concatenate([rng.normal(-100, 300, (n, 1)), rng.normal(0, 2, (n, 3))], 1).astype(np.float32)
    return centres, fields


def write_run(path: Path, centres=None, fields=None, run_id: int = 0, **extra) -> None:
    """An archive in the exact real layout (plain np.savez, not the project's writer)."""
    c, f = run_arrays(run_id)
    arrays = {
        "surface_mesh_centers": c if centres is None else centres,
        "surface_fields": f if fields is None else fields,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not False}, **extra)


@pytest.fixture
def root(tmp_path) -> Path:
    for name, ids in (("train", TRAIN_IDS), ("test", TEST_IDS)):
        for i in ids:
            write_run(tmp_path / name / f"run_{i}.npz", run_id=i)
    return tmp_path


def setup_dm(root: Path, stage: str = "fit", **kw) -> DrivAerMLDataModule:
    dm = DrivAerMLDataModule(root=str(root), **{"n_val": 1, **kw})
    dm.prepare_data()
    dm.setup(stage)
    return dm


@pytest.mark.parametrize(
    "targets, cp, cols, scale",
    [
        ("pressure", False, 1, 1.0),
        ("pressure_wss", False, 4, 1.0),
        ("pressure", True, 1, Q_INF),
        ("pressure_wss", True, 4, Q_INF),
    ],
)
def test_reads_runs_with_targets_and_units(root, targets, cp, cols, scale):
    dm = setup_dm(root, targets=targets, pressure_as_cp=cp)
    assert dm.out_dim == cols and dm.in_dim == 3
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert train.run_ids == TRAIN_IDS[:-1] and val.run_ids == TRAIN_IDS[-1:]
    for k, run_id in enumerate(train.run_ids):
        centres, fields = run_arrays(run_id)
        sample = train[k]
        assert sample.pos.shape == (len(centres), 3) and sample.y.shape == (len(centres), cols)
        np.testing.assert_array_equal(sample.pos.numpy(), centres)
        np.testing.assert_allclose(sample.y.numpy(), fields[:, :cols] / scale, rtol=1e-6)
    dm.setup("test")
    assert dm.datasets["test"].run_ids == TEST_IDS


def test_normalisation_is_fitted_on_training_runs_only(root):
    dm = setup_dm(root, targets="pressure_wss")
    train = np.concatenate([run_arrays(i)[1] for i in TRAIN_IDS[:-1]])
    pos = np.concatenate([run_arrays(i)[0] for i in TRAIN_IDS[:-1]])
    np.testing.assert_allclose(dm.target_stats[0].numpy(), train.mean(0), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dm.target_stats[1].numpy(), train.std(0), rtol=1e-4)
    np.testing.assert_allclose(dm.input_stats[0].numpy(), pos.mean(0), rtol=1e-4, atol=1e-4)


def test_n_val_zero_trains_on_all_runs_without_validation(root):
    dm = setup_dm(root, n_val=0)
    assert dm.datasets["train"].run_ids == TRAIN_IDS
    assert "val" not in dm.datasets and not dm.has_val and dm.val_dataloader() == []  # never the test runs
    assert dm.datasets["test"].run_ids == TEST_IDS  # read and checked before training


def test_split_file_picks_runs_from_any_folder(root):
    write_run(root / "run_34.npz", run_id=34)  # flat layout works too
    (root / "split.json").write_text(json.dumps({"train": [13, "run_2", 34, 5], "test": [1]}))
    dm = setup_dm(root, split_file="split.json")
    assert dm.datasets["train"].run_ids == [13, 2, 34] and dm.datasets["val"].run_ids == [5]
    np.testing.assert_array_equal(dm.datasets["train"][2].pos.numpy(), run_arrays(34)[0])
    dm.setup("test")
    assert dm.datasets["test"].run_ids == [1]


def test_num_points_keeps_a_fixed_subset_of_each_run(root):
    dm = setup_dm(root, num_points=25)
    first = dm.datasets["train"][2]  # run 3: 29 points
    assert first.pos.shape == (25, 3)
    centres, fields = run_arrays(3)
    rows = [int(np.nonzero((centres == p).all(1))[0][0]) for p in first.pos.numpy()]
    assert len(set(rows)) == 25
    np.testing.assert_array_equal(first.y[:, 0].numpy(), fields[rows, 0])
    again = setup_dm(root, num_points=25).datasets["train"][2]
    torch.testing.assert_close(again.pos, first.pos)
    assert dm.datasets["train"][0].pos.shape[0] == 23  # run 1 has fewer points: all kept


def test_padded_batches_match_single_samples(root):
    dm = setup_dm(root)
    torch.manual_seed(0)
    model = FLARE(3, 1, channels=16, num_blocks=2, num_heads=2, num_latents=8).eval()
    samples = [dm.datasets["train"][k] for k in range(4)]
    assert len({s.num_nodes for s in samples}) == 4
    collate = PaddedCollate()
    batch = collate(samples)
    with torch.no_grad():
        together = model(batch["x"], batch["mask"])
        for k, s in enumerate(samples):
            alone = collate([s])
            torch.testing.assert_close(
                together[k, : s.num_nodes], model(alone["x"], alone["mask"])[0], atol=1e-5, rtol=1e-4
            )


def test_training_batches_carry_only_what_the_step_reads(root):
    """Training batches hold x, y and the mask (pos would only cross to the GPU, 12 MB a step at
    2^20 points); validation batches keep pos for predictions and field plots."""
    dm = setup_dm(root)
    train = next(iter(dm.train_dataloader()))
    assert set(train) == {"x", "y", "mask", "padded", "sample_id"}
    val = next(iter(dm.val_dataloader()))
    assert {"x", "y", "mask", "pos"} <= set(val)
    torch.testing.assert_close(val["pos"], val["x"][..., :3])  # the coordinates are the model's first inputs


def tiny_model_args() -> list[str]:
    return [
        "--model.model.init_args.channels=16",
        "--model.model.init_args.num_blocks=1",
        "--model.model.init_args.num_heads=2",
        "--model.model.init_args.num_latents=8",
    ]


def test_cli_fast_dev_run_on_real_layout(root, tmp_path):
    cli = run_cli(
        [
            "fit",
            f"--config={CONFIGS / 'drivaerml.yaml'}",
            f"--data.root={root}",
            "--data.proxy=false",
            "--data.n_val=1",
            "--trainer.fast_dev_run=1",
            *tiny_model_args(),
            *tiny_trainer_args(tmp_path / "runs"),
        ]
    )
    assert cli.trainer.state.finished
    assert cli.datamodule.label == "DrivAerML"
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["test/rel_l2"])  # test_after_fit ran on the test runs


def test_cli_fast_dev_run_on_generated_proxy(tmp_path):
    proxy = [
        "--data.proxy_train_runs=2",
        "--data.proxy_test_runs=1",
        "--data.proxy_panels=150",
        "--data.proxy_points=200",
        "--data.n_val=1",
    ]
    cli = run_cli(
        [
            "fit",
            f"--config={CONFIGS / 'drivaerml.yaml'}",
            f"--data.root={tmp_path / 'proxy'}",
            *proxy,
            "--trainer.fast_dev_run=1",
            *tiny_model_args(),
            *tiny_trainer_args(tmp_path / "runs"),
        ]
    )
    assert cli.trainer.state.finished
    assert cli.datamodule.label == "DrivAerML proxy (potential flow)"
    assert sorted(p.name for p in (tmp_path / "proxy").glob("*/run_*.npz")) == ["run_1.npz", "run_2.npz", "run_3.npz"]
    assert cli.datamodule.datasets["test"][0].pos.shape == (200, 3)


# --- bad input -------------------------------------------------------------------------
def test_missing_folders_are_named(tmp_path, root):
    with pytest.raises(FileNotFoundError, match=r"data folder not found: .*nowhere.*data.proxy=true"):
        setup_dm(tmp_path / "nowhere")
    for f in (root / "test").iterdir():
        f.unlink()
    (root / "test").rmdir()
    with pytest.raises(FileNotFoundError, match=r"folder .*test not found \(expected test/run_<i>.npz"):
        setup_dm(root)


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(fields=False), r"run_2.npz: missing key 'surface_fields'"),
        (dict(centres=False), r"run_2.npz: missing key 'surface_mesh_centers'"),
        (
            dict(fields=np.zeros((5, 3), np.float32)),
            r"run_2.npz: key 'surface_fields' has shape \(5, 3\), expected \(26, 4\)",
        ),
        (
            dict(centres=np.zeros((26, 2), np.float32)),
            r"run_2.npz: key 'surface_mesh_centers' has shape \(26, 2\), expected \(\*, 3\)",
        ),
        (dict(fields=np.full((26, 4), np.nan, np.float32)), r"run_2.npz: key 'surface_fields' has 104 NaN/Inf"),
        (dict(centres=np.full((26, 3), np.inf, np.float32)), r"run_2.npz: key 'surface_mesh_centers' has 78 NaN/Inf"),
    ],
)
def test_bad_archives_name_file_and_key_and_leave_no_cache(root, arrays, match):
    write_run(root / "train" / "run_2.npz", run_id=2, **arrays)
    with pytest.raises(DataFormatError, match=match):
        setup_dm(root)
    caches = sorted(p.name for p in (root / "processed").glob("drivaermldataset_*/*"))
    assert "train__run_2.npz.pt" not in caches and not any(c.startswith(".") for c in caches)  # no temp file
    assert "train__run_8.npz.pt" in caches  # the validation run's, made before the bad training run


def test_unreadable_archive_is_named(root):
    (root / "train" / "run_3.npz").write_bytes(b"not an npz")
    with pytest.raises(DataFormatError, match=r"run_3.npz: not a readable .npz"):
        setup_dm(root)
    with open(root / "train" / "run_3.npz", "wb") as f:
        np.save(f, np.zeros(3))  # a bare .npy array under an .npz name
    with pytest.raises(DataFormatError, match=r"run_3.npz: holds a single array \(.npy\), expected an .npz archive"):
        setup_dm(root)


def test_empty_splits_are_errors(root):
    for f in (root / "train").iterdir():
        f.unlink()
    with pytest.raises(DataFormatError, match=r"no run_<i>.npz files in .*train \(the train split is empty\)"):
        setup_dm(root)
    (root / "split.json").write_text(json.dumps({"train": [13], "test": []}))
    with pytest.raises(DataFormatError, match=r"split.json: key 'test' must be a non-empty list"):
        setup_dm(root, split_file="split.json")


@pytest.mark.parametrize(
    "split, match",
    [
        ({"train": [1, 2, 99, 5], "test": [13, 77]}, r"split.json: names 2 run\(s\) with no file under .*: 99, 77"),
        ({"train": [1, 2]}, r"split.json: missing key 'test'"),
        ({"train": [1, "car_7"], "test": [13]}, r"split.json: key 'train' holds 'car_7', expected run ids"),
        ({"train": [1, 13], "test": [13]}, r"split.json: runs \[13\] are in both 'train' and 'test'"),
    ],
)
def test_bad_split_files_are_named(root, split, match):
    (root / "split.json").write_text(json.dumps(split))
    with pytest.raises(DataFormatError, match=match):
        setup_dm(root, split_file="split.json")


def test_missing_split_file_and_bad_options(root):
    with pytest.raises(FileNotFoundError, match=r"split file not found: .*nosplit.json"):
        setup_dm(root, split_file="nosplit.json")
    with pytest.raises(ValueError, match=r"targets must be one of .*got 'velocity'"):
        DrivAerMLDataModule(root=str(root), targets="velocity")
    with pytest.raises(ValueError, match=r"n_val=5 leaves none of the 5 training runs"):
        setup_dm(root, n_val=5)
    with pytest.raises(ValueError, match=r"source=vtp needs data.split_file"):
        setup_dm(root, source="vtp")


def test_proxy_and_real_files_are_never_mixed(root, tmp_path):
    write_run(root / "train" / "run_2.npz", run_id=2, proxy=np.array("DrivAerML proxy (potential flow)"))
    with pytest.raises(
        DataFormatError, match=r"run_2.npz: this is DrivAerML proxy \(potential flow\) data, not DrivAerML"
    ):
        setup_dm(root)
    with pytest.raises(DataFormatError, match=r"run_1.npz: data.proxy=true, but this is not a DrivAerML proxy"):
        setup_dm(root, proxy=True)
    assert sorted(p.name for p in (root / "train").iterdir()) == [f"run_{i}.npz" for i in TRAIN_IDS]


# --- raw .vtp surfaces -------------------------------------------------------------------
def write_vtp(path: Path, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Two triangles and a quad with the given cell arrays; returns their centroids (3, 3)."""
    pytest.importorskip("vtk")
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [2, 0, 0], [2, 1, 1]], dtype=np.float64)
    cells = [[0, 1, 2], [1, 3, 2], [1, 4, 5, 3]]
    mesh_files.write_vtp(path, pts, cells, arrays)
    return np.array([pts[c].mean(0) for c in cells], dtype=np.float32)


def vtp_fields(run_id: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(run_id)
    return {
        "pMeanTrim": rng.normal(size=3).astype(np.float32),
        "wallShearStressMeanTrim": rng.normal(size=(3, 3)).astype(np.float32),
    }


def test_reads_raw_vtp_boundaries(tmp_path):
    pytest.importorskip("vtk")
    centres = {i: write_vtp(tmp_path / f"run_{i}" / f"boundary_{i}.vtp", vtp_fields(i)) for i in (1, 2, 3)}
    (tmp_path / "split.json").write_text(json.dumps({"train": [1, 2], "test": [3]}))
    dm = setup_dm(tmp_path, source="vtp", split_file="split.json", targets="pressure_wss", pressure_as_cp=True)
    sample = dm.datasets["train"][0]
    fields = vtp_fields(1)
    np.testing.assert_allclose(sample.pos.numpy(), centres[1], atol=1e-6)
    np.testing.assert_allclose(sample.areas[:2, 0].numpy(), [0.5, 0.5], rtol=1e-6)  # every cell, at full resolution
    np.testing.assert_allclose(sample.normals[:2].numpy(), [[0, 0, 1], [0, 0, 1]], atol=1e-6)  # into the body
    assert dm.datasets["train"].cache_path(0).name == "run_1__boundary_1.vtp.pt"
    expected = np.concatenate([fields["pMeanTrim"][:, None], fields["wallShearStressMeanTrim"]], 1) / Q_INF
    np.testing.assert_allclose(sample.y.numpy(), expected, rtol=1e-6)
    dm = setup_dm(tmp_path, source="vtp", split_file="split.json")
    np.testing.assert_allclose(dm.datasets["train"][0].y[:, 0].numpy(), fields["pMeanTrim"], rtol=1e-6)


def test_bad_vtp_names_file_and_array(tmp_path):
    pytest.importorskip("vtk")
    for i in (1, 2):
        write_vtp(tmp_path / f"run_{i}" / f"boundary_{i}.vtp", {"pMeanTrim": np.zeros(3, np.float32)})
    (tmp_path / "split.json").write_text(json.dumps({"train": [1], "test": [2, 4]}))
    with pytest.raises(DataFormatError, match=r"split.json: names 1 run\(s\) .*run_<i>/boundary_<i>.vtp\): 4"):
        setup_dm(tmp_path, source="vtp", split_file="split.json", n_val=0)
    (tmp_path / "split.json").write_text(json.dumps({"train": [1], "test": [2]}))
    with pytest.raises(DataFormatError, match=r"boundary_\d.vtp: missing cell array 'wallShearStressMeanTrim'"):
        setup_dm(tmp_path, source="vtp", split_file="split.json", n_val=0, targets="pressure_wss")
    write_vtp(tmp_path / "run_1" / "boundary_1.vtp", {"pMeanTrim": np.array([0, np.nan, 1], np.float32)})
    with pytest.raises(DataFormatError, match=r"boundary_1.vtp: key 'pMeanTrim' has 1 NaN/Inf"):
        setup_dm(tmp_path, source="vtp", split_file="split.json", n_val=0)


def test_vtp_without_vtk_says_how_to_install(monkeypatch):
    import builtins

    from datamodules import vtp

    real_import = builtins.__import__

    def no_vtk(name, *args, **kwargs):
        if name.startswith("vtkmodules"):
            raise ImportError("No module named 'vtkmodules'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vtk)
    with pytest.raises(ImportError, match=r"needs the optional dependency vtk: pip install 'flare-lightning\[vtk\]'"):
        vtp.read_vtp_cells("x.vtp", ["pMeanTrim"])
