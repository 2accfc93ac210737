"""Darcy loader: real FNO layouts (v5 and v7.3), splits, normalisation and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from datamodules.checks import DataFormatError
from datamodules.darcy import DarcyDataModule, read_darcy_mat
from datamodules.darcy_generate import HIGH, LOW, generate_darcy, write_darcy_mat
from datamodules.recipes import RECIPES


def make_arrays(n: int = 5, s: int = 11, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, s, s)).astype(np.float32), rng.normal(size=(n, s, s)).astype(np.float32)


def write_v73(path: Path, coeff: np.ndarray, sol: np.ndarray) -> None:
    """MATLAB v7.3: HDF5 behind a 512-byte MATLAB header, arrays column-major (axes reversed)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f["coeff"] = coeff.transpose()
        f["sol"] = sol.transpose()
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02IM")


def test_reads_v5_and_v73_files(tmp_path):
    coeff, sol = make_arrays()
    write_darcy_mat(tmp_path / "a.mat", coeff, sol)
    write_v73(tmp_path / "b.mat", coeff, sol)
    with pytest.raises(NotImplementedError):  # scipy recognises v7.3 and declines it
        scipy.io.loadmat(tmp_path / "b.mat")
    for name in ("a.mat", "b.mat"):
        arrays = read_darcy_mat(tmp_path / name)
        np.testing.assert_array_equal(arrays["coeff"], coeff)
        np.testing.assert_array_equal(arrays["sol"], sol)


def test_extra_fno_keys_are_ignored(tmp_path):
    coeff, sol = make_arrays()
    scipy.io.savemat(tmp_path / "c.mat", {"coeff": coeff, "sol": sol, "Kcoeff": coeff.astype(np.float64)})
    assert set(read_darcy_mat(tmp_path / "c.mat")) == {"coeff", "sol"}


def test_bad_files_name_the_file_and_key(tmp_path):
    coeff, sol = make_arrays()
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        read_darcy_mat(tmp_path / "nope.mat")
    scipy.io.savemat(tmp_path / "nokey.mat", {"coeff": coeff})
    with pytest.raises(DataFormatError, match=r"nokey.mat: missing key 'sol'"):
        read_darcy_mat(tmp_path / "nokey.mat")
    scipy.io.savemat(tmp_path / "shape.mat", {"coeff": coeff[:, :, :5], "sol": sol[:, :, :5]})
    with pytest.raises(DataFormatError, match=r"shape.mat: key 'coeff' has shape \(5, 11, 5\)"):
        read_darcy_mat(tmp_path / "shape.mat")
    bad = sol.copy()
    bad[2, 3, 4] = np.nan
    write_v73(tmp_path / "nan.mat", coeff, bad)
    with pytest.raises(DataFormatError, match=r"nan.mat: key 'sol' has 1 NaN/Inf value\(s\), first at index \(2, 3, 4\)"):
        read_darcy_mat(tmp_path / "nan.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataFormatError, match="junk.mat: not a readable MATLAB"):
        read_darcy_mat(tmp_path / "junk.mat")


def make_dm(root: Path, **kw) -> DarcyDataModule:
    args = dict(root=str(root), train_file="train.mat", test_file="test.mat", n_train=4, n_val=2, n_test=3,
                stride=2, batch_size=2, generate=False)
    args.update(kw)
    return DarcyDataModule(**args)


def test_splits_points_and_training_only_statistics(tmp_path):
    coeff, sol = make_arrays(n=7, s=11)
    tcoeff, tsol = make_arrays(n=3, s=21, seed=1)
    write_darcy_mat(tmp_path / "train.mat", coeff, sol)
    write_darcy_mat(tmp_path / "test.mat", tcoeff, tsol)
    dm = make_dm(tmp_path, test_stride=4)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(train) == 4 and len(val) == 2
    sample = val[1]  # file sample 5
    assert sample.pos.shape == (36, 2) and sample.x.shape == (36, 1) and sample.y.shape == (36, 1)
    np.testing.assert_array_equal(sample.x.numpy().reshape(6, 6), coeff[5, ::2, ::2])
    np.testing.assert_array_equal(sample.y.numpy().reshape(6, 6), sol[5, ::2, ::2])
    np.testing.assert_allclose(sample.pos[:, 0].unique().numpy(), np.linspace(0, 1, 11)[::2], rtol=1e-6)
    # statistics: inputs (x, y, coeff) and target over the 4 training samples only
    grid = np.linspace(0, 1, 11)[::2]
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    inputs = np.concatenate(
        [np.stack([np.tile(xx.ravel(), 4), np.tile(yy.ravel(), 4), coeff[:4, ::2, ::2].ravel()], 1)]
    )
    np.testing.assert_allclose(dm.input_stats[0].numpy(), inputs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dm.input_stats[1].numpy(), inputs.std(0), rtol=1e-5)
    np.testing.assert_allclose(dm.target_stats[0].numpy(), [sol[:4, ::2, ::2].mean()], rtol=1e-4, atol=1e-6)
    # the test file has another resolution and keeps its own
    dm.setup("test")
    test = dm.datasets["test"]
    assert len(test) == 3 and test[0].num_nodes == 36
    np.testing.assert_array_equal(test[2].y.numpy().reshape(6, 6), tsol[2, ::4, ::4])


def test_padded_batches_from_the_loader(tmp_path):
    coeff, sol = make_arrays(n=7, s=11)
    write_darcy_mat(tmp_path / "train.mat", coeff, sol)
    write_darcy_mat(tmp_path / "test.mat", *make_arrays(n=3, s=11, seed=1))  # a copy of train.mat is refused
    dm = make_dm(tmp_path, train_points=20)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (2, 20, 3) and batch["y"].shape == (2, 20, 1) and batch["mask"].all()
    full = next(iter(dm.val_dataloader()))  # evaluation keeps every point
    assert full["x"].shape == (2, 36, 3)
    assert full["sample_id"].tolist() == [0, 1]


def test_loaders_pin_batches_only_for_a_gpu_trainer(tmp_path):
    """Pinned batches when the trainer's device is a GPU (an H2D copy from pageable memory
    would wait for the previous step's GPU work); none without a trainer or on the CPU."""
    from types import SimpleNamespace

    write_darcy_mat(tmp_path / "train.mat", *make_arrays(n=7, s=11))
    write_darcy_mat(tmp_path / "test.mat", *make_arrays(n=3, s=11, seed=1))
    dm = make_dm(tmp_path)
    dm.setup("fit")
    assert not dm.train_dataloader().pin_memory
    for device, pinned in (("cpu", False), ("cuda", True)):
        strategy = SimpleNamespace(root_device=torch.device(device), distributed_sampler_kwargs=None)
        dm.trainer = SimpleNamespace(strategy=strategy, world_size=1, global_rank=0)
        assert dm.train_dataloader().pin_memory is pinned
        assert dm.val_dataloader().pin_memory is pinned


def test_too_few_samples_and_missing_files(tmp_path):
    coeff, sol = make_arrays(n=5)
    write_darcy_mat(tmp_path / "train.mat", coeff, sol)
    write_darcy_mat(tmp_path / "test.mat", coeff, sol)
    with pytest.raises(DataFormatError, match=r"train.mat: holds 5 samples, but samples 4..5"):
        make_dm(tmp_path).setup("fit")
    dm = make_dm(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="train.mat.*data.generate"):
        dm.prepare_data()
    with pytest.raises(ValueError, match="n_train must be >= 1"):
        make_dm(tmp_path, n_train=0)


def test_generates_missing_files_in_the_real_layout(tmp_path):
    dm = make_dm(tmp_path, generate=True, gen_resolution=9, gen_seed=4, stride=1)
    dm.prepare_data()
    arrays = scipy.io.loadmat(tmp_path / "train.mat")
    assert arrays["coeff"].shape == (6, 9, 9) and arrays["coeff"].dtype == np.float32
    np.testing.assert_array_equal(arrays["sol"], generate_darcy(6, 9, seed=4)[1])
    assert scipy.io.loadmat(tmp_path / "test.mat")["sol"].shape == (3, 9, 9)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind
    dm.setup("fit")
    assert torch.isfinite(dm.target_stats[1]).all()


def test_processed_cache_is_reused_and_refreshed(tmp_path):
    coeff, sol = make_arrays(n=7)
    write_darcy_mat(tmp_path / "train.mat", coeff, sol)
    write_darcy_mat(tmp_path / "test.mat", *make_arrays(n=3, seed=1))
    make_dm(tmp_path).setup("fit")  # train, val and (checked before training) test
    caches = sorted((tmp_path / "processed").glob("darcydataset_*.pt"))
    assert len(caches) == 3
    make_dm(tmp_path).setup("fit")
    assert sorted((tmp_path / "processed").glob("darcydataset_*.pt")) == caches
    make_dm(tmp_path, stride=1).setup("fit")  # another stride is another cache
    assert len(list((tmp_path / "processed").glob("darcydataset_*.pt"))) == 6


def test_generated_permeability_reaches_the_files_and_the_samples(tmp_path):
    dm = make_dm(tmp_path, generate=True, gen_resolution=9, gen_seed=4, stride=1, gen_permeability=(24.0, 1.5))
    dm.prepare_data()
    coeff = scipy.io.loadmat(tmp_path / "train.mat")["coeff"]
    np.testing.assert_array_equal(coeff, generate_darcy(6, 9, seed=4, permeability=(24.0, 1.5))[0])
    assert set(np.unique(scipy.io.loadmat(tmp_path / "test.mat")["coeff"])) == {1.5, 24.0}
    made = json.loads((tmp_path / RECIPES).read_text())["train.mat"]
    assert made == {"gen_resolution": 9, "gen_seed": 4, "gen_permeability": [24.0, 1.5]}
    assert dm.data_source == "generated"
    dm.setup("fit")
    assert set(dm.datasets["train"][0].x.unique().tolist()) <= {1.5, 24.0}


@pytest.mark.parametrize("option, value", [("gen_resolution", 7), ("gen_seed", 5), ("gen_permeability", (24.0, 1.5))])
def test_a_file_generated_with_other_options_is_refused_naming_them(tmp_path, option, value):
    """Changing a gen_* option must not silently train on the data the old options made."""
    make_dm(tmp_path, generate=True, gen_resolution=9, gen_seed=4, stride=1).prepare_data()
    before = (tmp_path / "train.mat").read_bytes()
    other = make_dm(tmp_path, generate=True, **{"gen_resolution": 9, "gen_seed": 4, "stride": 1, option: value})
    with pytest.raises(ValueError, match=rf"DarcyDataModule: .*train.mat was generated with {option}=.*"
                                         rf"asks for {option}=.*delete it.*data.train_file"):
        other.prepare_data()
    assert (tmp_path / "train.mat").read_bytes() == before  # nothing rewritten
    make_dm(tmp_path, generate=True, gen_resolution=9, gen_seed=4, stride=1).prepare_data()  # same options: reused
    make_dm(tmp_path, generate=False, **{option: value}).prepare_data()  # not generating: the options do not apply
    (tmp_path / "train.mat").unlink()
    (tmp_path / "test.mat").unlink()
    other.prepare_data()  # deleted: made again with the new options, which are then the recorded ones
    other.prepare_data()


def test_real_files_without_a_recipe_are_read_as_they_are(tmp_path):
    write_darcy_mat(tmp_path / "train.mat", *make_arrays(n=7, s=9))
    write_darcy_mat(tmp_path / "test.mat", *make_arrays(n=3, s=9, seed=1))
    make_dm(tmp_path, generate=True, gen_resolution=31).prepare_data()
    assert not (tmp_path / "GENERATED.json").exists()


@pytest.mark.parametrize("bad", [(12.0, 0.0), (3.0, 3.0), (12.0,)])
def test_bad_generated_permeability_is_refused_naming_the_key(tmp_path, bad):
    with pytest.raises(ValueError, match="DarcyDataModule: gen_permeability must be two"):
        make_dm(tmp_path, gen_permeability=bad)


def test_generated_permeability_is_a_cli_option():
    from tests.helpers import CONFIGS, resolved_config

    quickstart = [f"--config={CONFIGS / 'quickstart.yaml'}"]
    assert resolved_config(quickstart)["data"]["init_args"]["gen_permeability"] == [HIGH, LOW]
    other = resolved_config([*quickstart, "--data.init_args.gen_permeability=[24,1.5]"])
    assert other["data"]["init_args"]["gen_permeability"] == [24.0, 1.5]
