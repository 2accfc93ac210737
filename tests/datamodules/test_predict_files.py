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


# --- predict inputs get the checks of training inputs; outputs are named uniquely -------
def test_a_mesh_without_the_models_input_fields_is_refused(tmp_path):
    """Darcy takes (x, y, permeability): a mesh without ``x`` is refused, its z coordinate is
    never read as the permeability."""
    from datamodules.darcy import DarcyDataModule

    mesh = tmp_path / "plate.npz"
    np.savez(mesh, pos=np.random.default_rng(0).uniform(size=(6, 3)) * [1, 1, 0])
    reader = DarcyDataModule(root=str(tmp_path), predict_files=str(mesh)).predict_reader()
    with pytest.raises(DataFormatError, match=r"plate.npz: the model takes 2 coordinates and 1 input field\(s\) .* the file has 0"):
        reader(mesh)
    np.savez(mesh, pos=np.zeros((6, 2)), x=np.ones((6, 1)))
    assert reader(mesh)["x"].shape == (6, 1)


@pytest.mark.parametrize("positions", [np.ones((4, 2), dtype=np.complex64), np.full((4, 2), "1.5")], ids=["complex", "string"])
def test_positions_that_are_not_real_numbers_are_refused(tmp_path, positions):
    mesh = tmp_path / "m.npz"
    np.savez(mesh, pos=positions)
    with pytest.raises(DataFormatError, match=r"m.npz: key 'pos' has dtype .*expected a numeric"):
        PointSetReader(2, 1)(mesh)


def test_unused_keys_of_an_npz_are_never_read(tmp_path, monkeypatch):
    """A small mesh with a huge unused key: only pos, x and y are decompressed."""
    mesh = tmp_path / "m.npz"
    np.savez_compressed(mesh, pos=np.zeros((4, 2)), x=np.ones((4, 1)), junk=np.zeros((64, 64)))
    read = []
    real = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: read.append(key) or real(self, key))
    PointSetReader(3, 1)(mesh)
    assert "junk" not in read and "pos" in read


def test_float_cell_indices_are_refused(tmp_path):
    from datamodules.lpbf_predict import LPBFReader

    part = tmp_path / "part.npz"
    np.savez_compressed(part, pos=np.random.default_rng(0).uniform(0, 30, (9, 3)).astype(np.float32),
                        elems=np.full((2, 8), 1.7))
    with pytest.raises(DataFormatError, match=r"part.npz: key 'elems' has dtype float64, expected integer node indices"):
        LPBFReader(["disp_z"], (30, 30, 60))(part)
    np.savez_compressed(part, pos=np.zeros((9, 3), np.float32), elems=np.full((2, 8), 9))
    with pytest.raises(DataFormatError, match=r"node indices outside \[0, 9\)"):
        LPBFReader(["disp_z"], (30, 30, 60))(part)


@pytest.mark.parametrize("names, match", [
    (["..npz"], r"output name '\.' is not a plain file name"),
    ([".hidden.npz"], r"output name '.hidden' is not a plain file name"),
    (["Mesh.npz", "mesh.npz"], r"would both be written as 'mesh'"),  # one file on a case-insensitive disk
])
def test_outputs_that_would_escape_hide_or_collide_are_refused(tmp_path, names, match):
    for name in names:
        np.savez(tmp_path / name, pos=np.zeros((3, 2)))
    files = [tmp_path / name for name in names]
    with pytest.raises(DataFormatError, match=match):
        check_unique_names(PredictFileDataset(files, PointSetReader(2, 1)))


def test_names_with_dots_give_one_file_each(tmp_path):
    pytest.importorskip("vtk")
    from flare_lightning.io.mesh_geometry import MeshGeometry
    from flare_lightning.io.vtk_writer import write_fields

    files = [tmp_path / "mesh.v1.npz", tmp_path / "mesh.v2.npz"]
    for f in files:
        np.savez(f, pos=np.zeros((3, 2)))
    dataset = PredictFileDataset(files, PointSetReader(2, 1))
    check_unique_names(dataset)
    out = tmp_path / "out"
    for i in range(2):
        geometry = dataset[i][1]
        write_fields(out / geometry.name, geometry, {"prediction": np.full(3, float(i))})
    assert sorted(p.name for p in out.iterdir()) == ["mesh.v1.vtu", "mesh.v2.vtu"]
    with pytest.raises(ValueError, match="not a plain file name"):
        MeshGeometry("..", points=np.zeros((1, 2)))
