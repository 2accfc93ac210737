"""Elasticity (Geo-FNO): von Mises stress in a hyperelastic unit cell with a random void,
on the 972-point cloud of each cell's mesh."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from datamodules.checks import DataFormatError, check_shape, finite_float32, require_files
from datamodules.elasticity_generate import FILES, generate_elasticity, write_elasticity
from datamodules.mesh_datamodule import MeshDataModule
from datamodules.mesh_dataset import MeshDataset
from datamodules.numpy_files import load_npy
from datamodules.recipes import check_recipe, keep_recipe

log = logging.getLogger(__name__)
READ = ("XY", "sigma")  # rr and theta describe the void; the model sees the points only


def load_elasticity(root: str | Path) -> dict[str, np.ndarray]:
    """Memory-mapped ``XY`` (N, 2, S) and ``sigma`` (N, S) from ``root/Meshes``, checked
    for matching shapes; errors name the file, the array and what was expected."""
    root = Path(root)
    require_files([root / FILES[k] for k in READ], hint=f"the Geo-FNO elasticity data goes in {root / 'Meshes'}")
    arrays = {key: load_npy(root / FILES[key], key) for key in READ}
    xy = check_shape(arrays["XY"], (None, 2, None), root / FILES["XY"], "XY")
    check_shape(arrays["sigma"], (xy.shape[0], xy.shape[2]), root / FILES["sigma"], "sigma")
    if xy.shape[0] == 0 or xy.shape[2] == 0:
        raise DataFormatError(
            f"{root / FILES['XY']}: holds {xy.shape[2]} samples of {xy.shape[0]} points; expected at least one"
        )
    return arrays


class ElasticityDataset(MeshDataset):
    """Samples ``[start, start + count)`` of the Geo-FNO elasticity files.

    A sample holds ``pos`` [972, 2] (x, y in the unit cell [0, 1]², dimensionless) and
    ``y`` [972, 1] (von Mises stress, in the units of the applied traction of 100).
    Source: the Geo-FNO data release (Li et al., arXiv 2207.05209); licence: Geo-FNO data.

    ==========  =======  ======  =============================
    samples     points   in/out  paper split
    ==========  =======  ======  =============================
    2000        972      2 / 1   first 1000 train, last 200 test
    ==========  =======  ======  =============================

    Args:
        root: folder holding ``Meshes/Random_UnitCell_{XY,sigma}_10.npy``.
        start: first sample index.
        count: number of samples.
    """

    def __init__(self, root: str | Path, start: int, count: int) -> None:
        self.start, self.count = start, count
        super().__init__(root)

    def sample_keys(self) -> list[tuple[str, str, int]]:
        xy, sigma = (self.raw_digests[FILES[k]] for k in READ)
        return [(xy, sigma, self.start + i) for i in range(len(self))]

    def sample_name(self, index: int) -> str:
        return f"{Path(self.raw_dir) / FILES['XY']} (and sigma): sample {self.start + index}"

    def expected_samples(self) -> int:
        return self.count

    @property
    def raw_file_names(self) -> list[str]:
        return [FILES[k] for k in READ]

    def cache_config(self) -> dict:
        return {"files": self.raw_file_names, "start": self.start, "count": self.count}

    def read_samples(self) -> Iterator[dict[str, np.ndarray]]:
        arrays = load_elasticity(self.raw_dir)
        total = arrays["XY"].shape[2]
        if self.start + self.count > total:
            raise DataFormatError(
                f"{Path(self.raw_dir) / FILES['XY']}: holds {total} samples, but samples "
                f"{self.start}..{self.start + self.count - 1} were asked for (check n_train/n_val/n_test)"
            )
        window = slice(self.start, self.start + self.count)
        xy = finite_float32(arrays["XY"][:, :, window], Path(self.raw_dir) / FILES["XY"], "XY")
        sigma = finite_float32(arrays["sigma"][:, window], Path(self.raw_dir) / FILES["sigma"], "sigma")
        for i in range(self.count):
            yield {"pos": xy[:, :, i], "y": sigma[:, i : i + 1]}


class ElasticityDataModule(MeshDataModule):
    """Elasticity: input (x, y) of each mesh point, target von Mises stress.

    Split as in Geo-FNO and the FLARE paper: training on the first ``n_train`` samples,
    testing on the last ``n_test`` (1000 / 200 of 2000). Validation takes the ``n_val``
    samples right after the training ones, from the training part of the file, and must
    not reach into the test samples. When the files are absent and ``generate`` is on,
    cells are made here with a finite-element solve (``elasticity_generate``) and
    written in the Geo-FNO layout, so the real loading path is always the one used.

    Args:
        root: folder holding ``Meshes/Random_UnitCell_*_10.npy``.
        n_train: training samples (paper: 1000).
        n_val: validation samples, taken after the training ones.
        n_test: test samples, the last ones of the file (paper: 200).
        generate: make missing files with the finite-element solver.
        gen_samples: samples to generate (default: n_train + n_val + n_test).
        gen_seed: seed of generated data.
        gen_workers: processes used to generate.
        **kwargs: the loader options of ``MeshDataModule`` (batch_size: paper 2, train_points:
            None uses all 972 points, ...).
    """

    pos_dim = 2
    in_dim = 2
    out_dim = 1

    def __init__(
        self,
        root: str = "data/elasticity",
        n_train: int = 1000,
        n_val: int = 100,
        n_test: int = 200,
        generate: bool = True,
        gen_samples: int | None = None,
        gen_seed: int = 0,
        gen_workers: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.check_options(1, n_train=n_train, n_test=n_test)
        self.check_options(0, n_val=n_val)
        if generate:
            self.check_options(1, gen_workers=gen_workers)
            self.check_options(n_train + n_val + n_test, allow_none=True, gen_samples=gen_samples)
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.generate = generate
        self.gen_samples = gen_samples or n_train + n_val + n_test
        self.gen_seed, self.gen_workers = gen_seed, gen_workers

    def prepare_data(self) -> None:
        if self.predicting_files():
            return  # new meshes only: no training data is needed
        present = [f for f in FILES.values() if (self.root / f).exists()]
        recipe = {"gen_seed": self.gen_seed}
        if present and self.generate:
            check_recipe(self.root, "Meshes/", recipe, type(self).__name__)
        if present or not self.generate:
            return  # reading reports any missing file by name
        log.warning(
            "Elasticity: no Geo-FNO files in %s; generating %d unit cells with scikit-fem "
            "(made here, not the Geo-FNO data) using %d process(es)",
            self.root / "Meshes", self.gen_samples, self.gen_workers,
        )
        write_elasticity(self.root, generate_elasticity(self.gen_samples, self.gen_seed, self.gen_workers))
        keep_recipe(self.root, "Meshes/", recipe)

    def split_ranges(self) -> dict[str, tuple[int, int]]:
        """(start, count) of each split, checked against the number of samples on disk."""
        total = load_elasticity(self.root)["XY"].shape[2]
        test_start = total - self.n_test
        if self.n_train + self.n_val > test_start:
            raise DataFormatError(
                f"{self.root / FILES['XY']}: holds {total} samples; n_train + n_val = "
                f"{self.n_train} + {self.n_val} would overlap the last n_test = {self.n_test} (test) samples"
            )
        return {"train": (0, self.n_train), "val": (self.n_train, self.n_val), "test": (test_start, self.n_test)}

    def make_datasets(self, splits: list[str]) -> dict[str, Dataset]:
        ranges = self.split_ranges()
        return {split: ElasticityDataset(self.root, *ranges[split]) for split in splits}
