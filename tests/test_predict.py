"""``flare predict`` on folders of new meshes, for every dataset config: one VTK file per
mesh, read back with vtk, holding the model's prediction (chunked evaluation equal to the
plain forward), the target and the error where the file has targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flare_lightning.training.module import SurrogateModule
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args
from tests.mesh_files import read_arrays, subdivided_box, write_vtp

pytest.importorskip("vtk")

TINY_MODEL = [
    "--model.model.init_args.channels=16",
    "--model.model.init_args.num_blocks=1",
    "--model.model.init_args.num_heads=2",
    "--model.model.init_args.num_latents=4",
]
ONE_STEP = ["--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--test_after_fit=false", "--trainer.callbacks=[]"]


# --- training data in each dataset's real layout, and new meshes to predict -------------
def elasticity_data(root: Path) -> list[str]:
    from datamodules.elasticity_generate import FILES

    rng = np.random.default_rng(0)
    arrays = {"XY": rng.uniform(0, 1, (12, 2, 6)), "sigma": rng.uniform(0, 300, (12, 6)),
              "rr": rng.uniform(0.2, 0.4, (42, 6)), "theta": rng.normal(size=(6, 10))}
    (root / "Meshes").mkdir(parents=True)
    for key, array in arrays.items():
        np.save(root / FILES[key], array)
    return [f"--data.init_args.root={root}", "--data.init_args.generate=false", "--data.init_args.n_train=3",
            "--data.init_args.n_val=1", "--data.init_args.n_test=2"]


def drivaerml_data(root: Path) -> list[str]:
    rng = np.random.default_rng(1)
    for split, ids in (("train", [1, 2, 3]), ("test", [7])):
        for i in ids:
            n = 20 + i
            fields = np.concatenate([rng.normal(-100, 300, (n, 1)), rng.normal(0, 2, (n, 3))], 1)
            (root / split).mkdir(parents=True, exist_ok=True)
            np.savez(root / split / f"run_{i}.npz", surface_mesh_centers=rng.uniform(-1, 4, (n, 3)).astype(np.float32),
                     surface_fields=fields.astype(np.float32))
    return [f"--data.init_args.root={root}", "--data.init_args.proxy=false", "--data.init_args.n_val=1",
            "--data.init_args.targets=pressure_wss"]


def lpbf_case(n: int, seed: int, fields: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"pos": rng.uniform([-30, -30, 0], [30, 30, 60], (n, 3)).astype(np.float32),
              "elems": rng.integers(0, n, (3, 8)).astype(np.int32)}
    if fields:
        arrays |= {"disp": rng.normal(0, 0.3, (n, 3)).astype(np.float32),
                   "vmstr": rng.uniform(0, 1500, (n, 1)).astype(np.float32)}
    return arrays


def lpbf_data(root: Path) -> list[str]:
    for split, sizes in (("train", [9, 12, 15]), ("test", [10])):
        (root / split).mkdir(parents=True)
        for i, n in enumerate(sizes):
            np.savez_compressed(root / split / f"case{i:05d}.npz", **lpbf_case(n, 10 * i + len(split)))
    return [f"--data.init_args.root={root}", "--data.init_args.generate=false", "--data.init_args.n_val=1",
            "--data.init_args.targets=[disp_z, vmstr]"]


def new_point_sets(folder: Path, dim: int, inputs: int, out: int) -> dict[str, dict]:
    """npz point sets (one without targets) and a .vtu with triangles; expected file -> facts."""
    import vtk
    from vtkmodules.util.numpy_support import numpy_to_vtk

    rng = np.random.default_rng(5)
    folder.mkdir(parents=True)
    expect = {}
    for i, n in enumerate((17, 30)):
        arrays = {"pos": rng.uniform(0, 1, (n, dim))}
        if inputs:
            arrays["x"] = rng.uniform(3, 12, (n, inputs))
        if i:
            arrays["y"] = rng.normal(size=(n, out))
        np.savez(folder / f"shape_{i}.npz", **arrays)
        expect[f"shape_{i}.vtu"] = {"n": n, "target": arrays.get("y")}
    grid = vtk.vtkUnstructuredGrid()
    pts = np.pad(rng.uniform(0, 1, (12, dim)), ((0, 0), (0, 3 - dim)))
    points = vtk.vtkPoints()
    points.SetData(numpy_to_vtk(pts, deep=True))
    grid.SetPoints(points)
    for t in range(10):
        grid.InsertNextCell(vtk.VTK_TRIANGLE, 3, [t, t + 1, t + 2])
    y = rng.normal(size=(12, out)).astype(np.float32)
    for name, values in (("x", rng.uniform(3, 12, (12, inputs))), ("y", y)):
        if values.shape[1]:
            arr = numpy_to_vtk(np.ascontiguousarray(values), deep=True)
            arr.SetName(name)
            grid.GetPointData().AddArray(arr)
    writer = vtk.vtkXMLUnstructuredGridWriter()
    writer.SetFileName(str(folder / "sub" / "mesh.vtu"))
    (folder / "sub").mkdir()
    writer.SetInputData(grid)
    writer.Write()
    expect["mesh.vtu"] = {"n": 12, "target": y, "cells": 10}
    return expect


def new_drivaerml(folder: Path) -> dict[str, dict]:
    points, polys = subdivided_box(n=2)
    rng = np.random.default_rng(3)
    fields = {"pMeanTrim": rng.normal(size=len(polys)), "wallShearStressMeanTrim": rng.normal(size=(len(polys), 3))}
    write_vtp(folder / "run_41" / "boundary_41.vtp", points, polys, fields)
    write_vtp(folder / "run_42" / "boundary_42.vtp", points * 1.5, polys)  # a new car: no fields
    np.savez(folder / "run_43.npz", surface_mesh_centers=rng.uniform(-1, 4, (25, 3)).astype(np.float32))
    target = np.concatenate([fields["pMeanTrim"][:, None], fields["wallShearStressMeanTrim"]], 1)
    return {"run_41.vtp": {"n": len(polys), "target": target, "cells": len(polys)},
            "run_42.vtp": {"n": len(polys), "target": None, "cells": len(polys)},
            "run_43.vtu": {"n": 25, "target": None}}


def new_lpbf(folder: Path) -> dict[str, dict]:
    folder.mkdir(parents=True)
    with_fields, without = lpbf_case(14, 77), lpbf_case(11, 78, fields=False)
    np.savez_compressed(folder / "part_a.npz", **with_fields)
    np.savez_compressed(folder / "part_b.npz", **without)
    target = np.stack([with_fields["disp"][:, 2], with_fields["vmstr"][:, 0]], -1)
    return {"part_a.vtu": {"n": 14, "target": target, "cells": 3, "points": with_fields["pos"]},
            "part_b.vtu": {"n": 11, "target": None, "cells": 3, "points": without["pos"]}}


CASES = {
    "quickstart.yaml": (None, lambda f: new_point_sets(f, 2, 1, 1), "points"),
    "elasticity.yaml": (elasticity_data, lambda f: new_point_sets(f, 2, 0, 1), "points"),
    "drivaerml.yaml": (drivaerml_data, new_drivaerml, None),
    "lpbf.yaml": (lpbf_data, new_lpbf, "points"),
}


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CASES))
def test_predict_folder_writes_one_vtk_file_per_mesh(config, tiny_darcy_root, tmp_path):
    make_data, make_meshes, _ = CASES[config]
    data = tiny_darcy_args(tiny_darcy_root) + ["--data.init_args.stride=1"] if make_data is None else make_data(tmp_path / "data")
    runs = tmp_path / "runs"
    run_cli(["fit", f"--config={CONFIGS / config}", *TINY_MODEL, *ONE_STEP, *data, *tiny_trainer_args(runs, "t")])
    ckpt = runs / "t" / "version_0" / "checkpoints" / "last.ckpt"
    expect = make_meshes(tmp_path / "new")
    out = tmp_path / "predicted"
    # Without the training data: new meshes only, evaluated 5 points at a time (exact chunking).
    cli = run_cli(["predict", f"--config={CONFIGS / config}", f"--ckpt_path={ckpt}", *TINY_MODEL, *data,
                   "--data.init_args.root=/nonexistent", f"--data.init_args.predict_files={tmp_path / 'new'}",
                   "--model.model.init_args.eval_chunk_size=5", f"--prediction_writer.output_dir={out}",
                   *tiny_trainer_args(runs, "t")])
    assert sorted(p.name for p in out.iterdir()) == sorted(expect)
    assert not cli.trainer.predict_loop.predictions  # written per batch, nothing kept in memory
    module = SurrogateModule.load_from_checkpoint(ckpt).eval()  # plain forward, no chunks
    reader = cli.datamodule.predict_reader()
    for path in cli.datamodule.datasets["predict"].files:
        sample = reader(path)
        name = sample["geometry"].name + (".vtp" if path.suffix == ".vtp" else ".vtu")
        facts = expect[name]
        association = "cells" if path.suffix == ".vtp" and config == "drivaerml.yaml" else "points"
        data_set, arrays = read_arrays(out / name, association)
        x = torch.as_tensor(np.concatenate([sample["pos"], sample.get("x", sample["pos"][:, :0])], 1), dtype=torch.float32)
        with torch.no_grad():
            want = module(x[None])[0].numpy()
        got = arrays["prediction"].reshape(facts["n"], -1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        if config == "drivaerml.yaml" and path.suffix == ".vtp":  # Cd/Cl of each predicted car
            assert np.isfinite(arrays["field:cd_pred"][0]) and np.isfinite(arrays["field:cl_pred"][0])
            assert ("field:cd_true" in arrays) == (facts["target"] is not None)
        if "cells" in facts:
            assert data_set.GetNumberOfCells() == facts["cells"]  # the input's connectivity is kept
        if "points" in facts:  # LPBF: original mm coordinates, not the scaled model inputs
            from vtkmodules.util.numpy_support import vtk_to_numpy

            np.testing.assert_allclose(vtk_to_numpy(data_set.GetPoints().GetData()), facts["points"], rtol=1e-6)
        if facts["target"] is None:
            assert "target" not in arrays and "error" not in arrays
        else:
            target = np.asarray(facts["target"], dtype=np.float32).reshape(facts["n"], -1)
            np.testing.assert_allclose(arrays["target"].reshape(target.shape), target, rtol=1e-6)
            np.testing.assert_allclose(arrays["error"].reshape(target.shape), got - target, rtol=1e-5, atol=1e-5)
            rel = np.linalg.norm(got - target) / np.linalg.norm(target)
            assert arrays["field:rel_l2"][0] == pytest.approx(rel, rel=1e-4)
