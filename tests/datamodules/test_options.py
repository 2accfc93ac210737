"""Degenerate data options fail at construction with the option named (shared validator)."""

from __future__ import annotations

import pytest

from datamodules import DarcyDataModule, DrivAerMLDataModule, ElasticityDataModule, LPBFDataModule

CASES = [
    (DarcyDataModule, {"train_points": 0}, "train_points must be >= 1 or None, got 0"),
    (DarcyDataModule, {"train_points": -5}, "train_points must be >= 1 or None, got -5"),
    (DarcyDataModule, {"batch_size": 0}, "batch_size must be >= 1, got 0"),
    (DarcyDataModule, {"eval_batch_size": 0}, "eval_batch_size must be >= 1 or None, got 0"),
    (DarcyDataModule, {"num_workers": -1}, "num_workers must be >= 0, got -1"),
    (DarcyDataModule, {"n_train": 0}, "n_train must be >= 1, got 0"),
    (DarcyDataModule, {"n_val": -1}, "n_val must be >= 0, got -1"),
    (DarcyDataModule, {"stride": 0}, "stride must be >= 1, got 0"),
    (DarcyDataModule, {"test_stride": 0}, "test_stride must be >= 1 or None, got 0"),
    (DarcyDataModule, {"gen_resolution": 2}, "gen_resolution must be >= 3, got 2"),
    (ElasticityDataModule, {"train_points": 0}, "train_points must be >= 1 or None, got 0"),
    (ElasticityDataModule, {"n_test": -2}, "n_test must be >= 1, got -2"),
    (ElasticityDataModule, {"gen_samples": 10}, "gen_samples must be >= 1300 or None, got 10"),
    (ElasticityDataModule, {"gen_workers": 0}, "gen_workers must be >= 1, got 0"),
    (DrivAerMLDataModule, {"num_points": 0}, "num_points must be >= 1 or None, got 0"),
    (DrivAerMLDataModule, {"n_val": -1}, "n_val must be >= 0, got -1"),
    (DrivAerMLDataModule, {"proxy": True, "proxy_panels": 0}, "proxy_panels must be >= 1, got 0"),
    (DrivAerMLDataModule, {"proxy": True, "proxy_points": -3}, "proxy_points must be >= 1, got -3"),
    (DrivAerMLDataModule, {"train_points": 0}, "train_points must be >= 1 or None, got 0"),
    (LPBFDataModule, {"n_train": 0}, "n_train must be >= 1 or None, got 0"),
    (LPBFDataModule, {"batch_size": -1}, "batch_size must be >= 1, got -1"),
    (LPBFDataModule, {"generate": True, "proxy_test": 0}, "proxy_test must be >= 1, got 0"),
    (LPBFDataModule, {"generate": True, "proxy_grid": (4, 1, 4)}, "proxy_grid must be 3 sizes >= 2 voxels"),
    (LPBFDataModule, {"generate": True, "proxy_voxel_size": 0.0}, "proxy_voxel_size must be > 0 mm"),
]


@pytest.mark.parametrize("cls, kw, match", CASES, ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in CASES])
def test_degenerate_option_is_refused_at_construction(tmp_path, cls, kw, match):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: {match}"):
        cls(root=str(tmp_path), **kw)
