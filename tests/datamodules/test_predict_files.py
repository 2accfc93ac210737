"""Reading new meshes for ``flare predict``: file lists, point sets, batches with and
without targets, disjoint shares under DDP, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.checks import DataFormatError
from datamodules.point_sets import PointSetReader
from datamodules.predict_files import PredictCollate, PredictFileDataset, check_unique_names, resolve_predict_files
from datamodules.subsample import ShardSampler


def write_sets(folder: Path, sizes=(5, 9, 7), dim=2) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, n in enumerate(sizes):
        arrays = {"pos": rng.uniform(size=(n, dim)), "x": rng.uniform(size=(n, 1))}
        if i % 2:
            arrays["y"] = rng.normal(size=n)
        path = folder / ("deep" if i == 2 else "") / f"set_{i}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        paths.append(path)
    (folder / "notes.txt").write_text("not a mesh")
    return paths


def test_folders_globs_and_files_resolve_sorted_and_once(tmp_path):
    paths = write_sets(tmp_path)
    assert resolve_predict_files(str(tmp_path)) == sorted(paths)
    assert resolve_predict_files(str(tmp_path / "set_*.npz")) == paths[:2]
    assert resolve_predict_files([str(paths[1]), str(tmp_path / "**" / "*.npz")]) == [paths[1], paths[2], paths[0]]  # sorted by path: deep/ first
    with pytest.raises(FileNotFoundError, match=r"data.predict_files='.*nothing\*': no mesh files found"):
        resolve_predict_files(str(tmp_path / "nothing*"))


def test_batches_pad_and_flag_missing_targets(tmp_path):
    paths = write_sets(tmp_path)
    ds = PredictFileDataset(paths, PointSetReader(3, 1))
    batch = PredictCollate()([ds[0], ds[1]])
    assert batch["x"].shape == (2, 9, 3) and batch["mask"].sum(1).tolist() == [5, 9]
    assert batch["has_target"].tolist() == [False, True]
    with np.load(paths[1]) as f:
        torch.testing.assert_close(batch["y"][1, :, 0], torch.as_tensor(f["y"], dtype=torch.float32))
        torch.testing.assert_close(batch["x"][1, :, :2], torch.as_tensor(f["pos"], dtype=torch.float32))
    assert [m.name for m in batch["meshes"]] == ["set_0", "set_1"]
    assert "y" not in PredictCollate()([ds[0], ds[2]])


def test_ddp_ranks_predict_disjoint_meshes(tmp_path):
    paths = write_sets(tmp_path, sizes=(5, 6, 7, 8, 9))
    shares = [set(ShardSampler(len(paths), 2, rank)) for rank in range(2)]
    assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == set(range(len(paths)))


def test_bad_point_sets_are_named(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pos=np.zeros((4, 3)), y=np.zeros((4, 2)))
    with pytest.raises(DataFormatError, match=r"bad.npz: key 'y' has shape \(4, 2\), expected \(4, 1\)"):
        PointSetReader(3, 1)(bad)
    np.savez(bad, pos=np.random.rand(4, 3))
    with pytest.raises(DataFormatError, match=r"bad.npz: the model takes 2-D coordinates, but the points vary"):
        PointSetReader(2, 1)(bad)
    np.savez(bad, pos=np.zeros((4, 2)), x=np.zeros((4, 3)))
    with pytest.raises(DataFormatError, match=r"takes 2 inputs; with 3 input field\(s\) in 'x'"):
        PointSetReader(2, 1)(bad)
    np.savez(bad, coords=np.zeros((4, 2)))
    with pytest.raises(DataFormatError, match=r"bad.npz: missing key 'pos'"):
        PointSetReader(2, 1)(bad)
    np.savez(bad, pos=np.array([[0.0, np.nan]]))
    with pytest.raises(DataFormatError, match=r"NaN/Inf"):
        PointSetReader(2, 1)(bad)


def test_two_inputs_with_one_output_name_are_refused(tmp_path):
    a, b = tmp_path / "a" / "m.npz", tmp_path / "b" / "m.npz"
    for p in (a, b):
        p.parent.mkdir()
        np.savez(p, pos=np.zeros((3, 2)))
    with pytest.raises(DataFormatError, match=r"would both be written as 'm'"):
        check_unique_names(PredictFileDataset(resolve_predict_files(str(tmp_path)), PointSetReader(2, 1)))
