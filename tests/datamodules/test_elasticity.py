"""Elasticity loader: the Geo-FNO .npy layout, splits, normalisation, bad input, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.checks import DataFormatError
from datamodules.elasticity import ElasticityDataModule
from datamodules.elasticity_generate import FILES
from tests.datamodules.batching import assert_batch_matches_singles
from tests.helpers import CONFIGS, run_cli, tiny_trainer_args

N_POINTS, N_SAMPLES = 12, 10


def geofno_arrays(n_points: int = N_POINTS, n_samples: int = N_SAMPLES) -> dict[str, np.ndarray]:
    """Arrays in the Geo-FNO layout; sigma[p, s] = 100 s + p makes every sample identifiable."""
    rng = np.random.default_rng(0)
    return {
        "XY": rng.uniform(0, 1, (n_points, 2, n_samples)),
        "sigma": 100.0 * np.arange(n_samples)[None, :] + np.arange(n_points)[:, None],
        "rr": rng.uniform(0.2, 0.4, (42, n_samples)),
        "theta": rng.normal(size=(n_samples, 10)),
    }


def write_geofno(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    (root / "Meshes").mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        np.save(root / FILES[key], array)
    return root


def datamodule(root: Path, **kw) -> ElasticityDataModule:
    kw = {"n_train": 5, "n_val": 2, "n_test": 2, "batch_size": 2, "generate": False} | kw
    return ElasticityDataModule(root=str(root), **kw)


def test_reads_layout_with_paper_split_and_train_only_stats(tmp_path):
    arrays = geofno_arrays()
    dm = datamodule(write_geofno(tmp_path, arrays))
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.datasets["train"]), len(dm.datasets["val"])) == (5, 2)
    for split, first in (("train", 0), ("val", 5)):  # validation right after training
        for i, sample in enumerate(dm.datasets[split]):
            np.testing.assert_allclose(sample.pos.numpy(), arrays["XY"][:, :, first + i], rtol=1e-6)
            np.testing.assert_allclose(sample.y.numpy()[:, 0], arrays["sigma"][:, first + i])
    train_sigma, train_xy = arrays["sigma"][:, :5], arrays["XY"][:, :, :5]
    mean, std = dm.target_stats
    np.testing.assert_allclose(mean.numpy(), [train_sigma.mean()], rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), [train_sigma.std()], rtol=1e-5)
    np.testing.assert_allclose(dm.input_stats[0].numpy(), train_xy.mean(axis=(0, 2)), rtol=1e-5)

    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (2, N_POINTS, 2) and batch["y"].shape == (2, N_POINTS, 1)
    assert batch["mask"].all()

    dm.setup("test")  # test: the last n_test samples of the file
    test = dm.datasets["test"]
    assert len(test) == 2
    for i, sample in enumerate(test):
        np.testing.assert_allclose(sample.y.numpy()[:, 0], arrays["sigma"][:, N_SAMPLES - 2 + i])


def test_batches_match_single_samples(tmp_path):
    dm = datamodule(write_geofno(tmp_path, geofno_arrays()))
    dm.setup("fit")
    assert_batch_matches_singles(dm.datasets["train"], in_dim=2, out_dim=1)


def _shape_xy(a):
    a["XY"] = a["XY"][:, :1]


def _short_sigma(a):
    a["sigma"] = a["sigma"][:, :-1]


def _nan_sigma(a):
    a["sigma"][3, 1] = np.nan


def _inf_xy(a):
    a["XY"][0, 0, 0] = np.inf


def _no_samples(a):
    a["XY"], a["sigma"] = a["XY"][:, :, :0], a["sigma"][:, :0]


@pytest.mark.parametrize(
    "corrupt, error, match",
    [
        (_shape_xy, DataFormatError, r"Random_UnitCell_XY_10\.npy: key 'XY' has shape \(12, 1, 10\), expected \(\*, 2, \*\)"),
        (_short_sigma, DataFormatError, r"Random_UnitCell_sigma_10\.npy: key 'sigma' has shape \(12, 9\), expected \(12, 10\)"),
        (_nan_sigma, DataFormatError, r"Random_UnitCell_sigma_10\.npy: key 'sigma' has 1 NaN/Inf value\(s\), first at index \(3, 1\)"),
        (_inf_xy, DataFormatError, r"Random_UnitCell_XY_10\.npy: key 'XY' has 1 NaN/Inf"),
        (_no_samples, DataFormatError, r"Random_UnitCell_XY_10\.npy: holds 0 samples"),
    ],
)
def test_bad_arrays_fail_before_training_and_leave_no_cache(tmp_path, corrupt, error, match):
    arrays = geofno_arrays()
    corrupt(arrays)
    dm = datamodule(write_geofno(tmp_path, arrays))
    with pytest.raises(error, match=match):
        dm.setup("fit")
    # only the validation cache (built before the failing training split) may exist, complete
    for cache in (tmp_path / "processed").glob("elasticitydataset_*"):
        assert torch.load(cache, weights_only=True)["fields"]["ptr"].numel() - 1 == 2
    assert not list(tmp_path.rglob("*.tmp"))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Meshes/Random_UnitCell_XY_10\.npy.*Meshes/Random_UnitCell_sigma_10\.npy"):
        datamodule(tmp_path / "nowhere").setup("fit")
    write_geofno(tmp_path, {"XY": geofno_arrays()["XY"]})  # sigma missing: never generated over a partial set
    dm = datamodule(tmp_path, generate=True)
    dm.prepare_data()
    assert not (tmp_path / FILES["rr"]).exists()
    with pytest.raises(FileNotFoundError, match=r"Random_UnitCell_sigma_10\.npy"):
        dm.setup("fit")


def test_unreadable_file_is_named(tmp_path):
    write_geofno(tmp_path, geofno_arrays())
    (tmp_path / FILES["sigma"]).write_bytes(b"not an npy file")
    with pytest.raises(DataFormatError, match=r"Random_UnitCell_sigma_10\.npy: not a readable \.npy"):
        datamodule(tmp_path).setup("fit")


def test_split_counts_are_checked(tmp_path):
    write_geofno(tmp_path, geofno_arrays())
    with pytest.raises(DataFormatError, match=r"holds 10 samples; n_train \+ n_val = 7 \+ 2 would overlap the last n_test = 2"):
        datamodule(tmp_path, n_train=7).setup("fit")
    with pytest.raises(ValueError, match="n_test must be >= 1"):
        datamodule(tmp_path, n_test=0)
    with pytest.raises(ValueError, match="n_val must be >= 0"):
        datamodule(tmp_path, n_val=-1)


def test_fit_fast_dev_run_generates_data_on_first_use(tmp_path):
    root = tmp_path / "elasticity"
    cli = run_cli(
        [
            "fit",
            f"--config={CONFIGS / 'elasticity.yaml'}",
            f"--data.init_args.root={root}",
            "--data.init_args.n_train=2",
            "--data.init_args.n_val=1",
            "--data.init_args.n_test=1",
            "--data.init_args.gen_workers=1",
            "--model.model.init_args.channels=16",
            "--model.model.init_args.num_blocks=1",
            "--model.model.init_args.num_heads=2",
            "--model.model.init_args.num_latents=8",
            "--trainer.fast_dev_run=1",
            *tiny_trainer_args(tmp_path, "elasticity"),
        ]
    )
    assert np.load(root / FILES["XY"]).shape == (972, 2, 4)  # n_train + n_val + n_test cells
    assert np.load(root / FILES["theta"]).shape == (4, 10)
    assert cli.model.hparams.weight_decay == 1e-5 and cli.model.model.in_dim == 2
    assert torch.isfinite(cli.trainer.callback_metrics["test/rel_l2"])  # test ran after fit
