"""Tiny raw data in each dataset's real layout, for the tests every datamodule must pass
(protocol, bad values, damaged files, caches, unpickling): one ``Tiny`` per kind knows
how to build its datamodule and where its test split lives."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from datamodules import DarcyDataModule, DrivAerMLDataModule, ElasticityDataModule, LPBFDataModule
from datamodules.elasticity_generate import FILES
from datamodules.mesh_datamodule import MeshDataModule
from datamodules.mesh_dataset import MeshDataset

KINDS = ("darcy", "elasticity", "drivaerml", "lpbf")


@dataclass
class Tiny:
    """A tiny data root of one kind.

    ``test_file`` is a raw file read only by the test split (for elasticity, whose splits
    share files, the file holding the test samples); ``set_test_value(v)`` writes ``v``
    (in float64) into one target value of a test sample, keeping everything else valid.
    """

    kind: str
    root: Path
    make: Callable[..., MeshDataModule]
    test_file: Path
    set_test_value: Callable[[float], None]
    train_file: Path

    def datamodule(self, **kw: Any) -> MeshDataModule:
        return self.make(**kw)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def darcy(root: Path) -> Tiny:
    def arrays(n: int, seed: int) -> dict[str, np.ndarray]:
        return {"coeff": _rng(seed).choice([3.0, 12.0], (n, 7, 7)), "sol": _rng(seed + 7).normal(size=(n, 7, 7))}

    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "train.mat", arrays(5, 0))
    scipy.io.savemat(root / "test.mat", arrays(2, 1))

    def set_test_value(v: float) -> None:
        a = arrays(2, 1)
        a["sol"][1, 3, 3] = v
        scipy.io.savemat(root / "test.mat", a)

    def make(**kw: Any) -> DarcyDataModule:
        args = dict(train_file="train.mat", test_file="test.mat", n_train=3, n_val=1, n_test=2, stride=1,
                    batch_size=2, generate=False)
        return DarcyDataModule(root=str(root), **(args | kw))

    return Tiny("darcy", root, make, root / "test.mat", set_test_value, root / "train.mat")


def elasticity(root: Path) -> Tiny:
    n_points, n_samples = 12, 9

    def arrays() -> dict[str, np.ndarray]:
        rng = _rng(0)
        return {"XY": rng.uniform(0, 1, (n_points, 2, n_samples)), "sigma": rng.uniform(0, 300, (n_points, n_samples))}

    def write(a: dict[str, np.ndarray]) -> None:
        (root / "Meshes").mkdir(parents=True, exist_ok=True)
        for key, array in a.items():
            np.save(root / FILES[key], array)

    write(arrays())

    def set_test_value(v: float) -> None:
        a = arrays()
        a["sigma"][4, n_samples - 1] = v  # the last sample is a test sample
        write(a)

    def make(**kw: Any) -> ElasticityDataModule:
        args = dict(n_train=4, n_val=1, n_test=2, batch_size=2, generate=False)
        return ElasticityDataModule(root=str(root), **(args | kw))

    return Tiny("elasticity", root, make, root / FILES["sigma"], set_test_value, root / FILES["XY"])


def drivaerml_run(run_id: int, n: int = 15) -> dict[str, np.ndarray]:
    rng = _rng(run_id)
    return {"surface_mesh_centers": rng.uniform(-1, 4, (n, 3)).astype(np.float32),
            "surface_fields": rng.normal(0, 100, (n, 4)).astype(np.float32)}


def drivaerml(root: Path) -> Tiny:
    for split, ids in (("train", (1, 2, 3)), ("test", (7, 8))):
        for i in ids:
            (root / split).mkdir(parents=True, exist_ok=True)
            np.savez(root / split / f"run_{i}.npz", **drivaerml_run(i))

    def set_test_value(v: float) -> None:
        run = drivaerml_run(8)
        fields = run["surface_fields"].astype(np.float64)
        fields[2, 0] = v
        np.savez(root / "test" / "run_8.npz", surface_mesh_centers=run["surface_mesh_centers"], surface_fields=fields)

    def make(**kw: Any) -> DrivAerMLDataModule:
        return DrivAerMLDataModule(root=str(root), **({"n_val": 1} | kw))

    return Tiny("drivaerml", root, make, root / "test" / "run_8.npz", set_test_value, root / "train" / "run_1.npz")


def lpbf_case(seed: int, n: int = 14) -> dict[str, np.ndarray]:
    rng = _rng(seed)
    return {
        "pos": rng.uniform([-30, -30, 0], [30, 30, 60], (n, 3)).astype(np.float32),
        "elems": rng.integers(0, n, (3, 8)).astype(np.int32),
        "edge_index": rng.integers(0, n, (2, 3 * n)).astype(np.int64),
        "disp": rng.normal(0, 0.3, (n, 3)).astype(np.float32),
        "vmstr": rng.uniform(0, 1500, (n, 1)).astype(np.float32),
        "temp": rng.uniform(25, 300, (n, 1)).astype(np.float32),
    }


def write_lpbf_case(path: Path, arrays: dict[str, np.ndarray], metadata: Any = None) -> None:
    """A case as the real files are: savez_compressed with a pickled ``_metadata`` object array."""
    if metadata is None:
        metadata = np.array([json.dumps({"metadata": {"case_name": path.stem}})], dtype=object)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays, _metadata=metadata)


def lpbf(root: Path) -> Tiny:
    for split, seeds in (("train", (1, 2, 3, 4)), ("test", (11, 12))):
        for i, seed in enumerate(seeds):
            write_lpbf_case(root / split / f"case{i:05d}.npz", lpbf_case(seed))

    def set_test_value(v: float) -> None:
        case = lpbf_case(12)
        case["disp"] = case["disp"].astype(np.float64)
        case["disp"][3, 2] = v
        write_lpbf_case(root / "test" / "case00001.npz", case)

    def make(**kw: Any) -> LPBFDataModule:
        return LPBFDataModule(root=str(root), **({"n_val": 1, "batch_size": 2} | kw))

    return Tiny("lpbf", root, make, root / "test" / "case00001.npz", set_test_value, root / "train" / "case00000.npz")


def tiny(kind: str, root: Path) -> Tiny:
    """Write the tiny data of ``kind`` under ``root``."""
    return {"darcy": darcy, "elasticity": elasticity, "drivaerml": drivaerml, "lpbf": lpbf}[kind](root)


class BigDataset(MeshDataset):
    """Synthetic samples read from one raw ``.npy`` of float32 rows [S * N, 4] (pos xyz, y),
    for measuring memory: sample i is rows [i N, (i + 1) N)."""

    def __init__(self, root: str | Path, samples: int, points: int) -> None:
        self.samples, self.points = samples, points
        super().__init__(root)

    @property
    def raw_file_names(self) -> list[str]:
        return ["big.npy"]

    def cache_config(self) -> dict:
        return {"samples": self.samples, "points": self.points}

    def read_samples(self):
        rows = np.load(Path(self.raw_dir) / "big.npy", mmap_mode="r")
        for i in range(self.samples):
            block = rows[i * self.points : (i + 1) * self.points]
            yield {"pos": block[:, :3], "y": block[:, 3:]}


def write_big(root: Path, samples: int, points: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rows = np.lib.format.open_memmap(root / "big.npy", mode="w+", dtype=np.float32, shape=(samples * points, 4))
    for i in range(samples):
        rows[i * points : (i + 1) * points] = i + 1  # never all zero: a zero target has no relative error
    rows.flush()
