"""Darcy flow (FNO benchmark): permeability -> pressure on a regular grid, as a point cloud."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from torch.utils.data import Dataset

from datamodules.checks import DataFormatError, finite_float32, require_key
from datamodules.darcy_generate import HIGH, LOW, check_permeability, generate_darcy, write_darcy_mat
from datamodules.mesh_dataset import MeshDataset
from datamodules.mesh_datamodule import MeshDataModule
from datamodules.recipes import check_recipe, keep_recipe

KEYS = ("coeff", "sol")


def read_darcy_mat(path: str | Path) -> dict[str, np.ndarray]:
    """``coeff`` and ``sol`` as [n, s, s] float32 from a MATLAB v5 (scipy) or v7.3
    (HDF5, axes reversed) file; errors name the file and the key at fault."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Darcy file not found: {path}")
    try:
        raw = scipy.io.loadmat(path, variable_names=list(KEYS))
        arrays = {k: np.asarray(require_key(raw, k, path)) for k in KEYS}
    except Exception as err:  # noqa: BLE001 - v7.3 (HDF5) lands here, and so does junk
        if isinstance(err, DataFormatError):
            raise
        arrays = _read_hdf5(path, err)
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise DataFormatError(f"{path}: key {k!r} has dtype {a.dtype}, expected a numeric (n, s, s) array")
        if a.ndim != 3 or a.shape[1] != a.shape[2]:
            raise DataFormatError(f"{path}: key {k!r} has shape {a.shape}, expected (n, s, s)")
    if arrays["coeff"].shape != arrays["sol"].shape:
        raise DataFormatError(
            f"{path}: 'coeff' {arrays['coeff'].shape} and 'sol' {arrays['sol'].shape} must have the same shape"
        )
    return {k: finite_float32(a, path, k) for k, a in arrays.items()}


def _read_hdf5(path: Path, err: Exception) -> dict[str, np.ndarray]:
    """MATLAB v7.3 layout: HDF5 datasets stored column-major, so axes come reversed."""
    import h5py

    if not h5py.is_hdf5(path):
        raise DataFormatError(f"{path}: not a readable MATLAB v5 or v7.3 (HDF5) file ({err})") from err
    with h5py.File(path, "r") as f:
        return {k: np.asarray(require_key(f, k, path)).transpose() for k in KEYS}


class DarcyDataset(MeshDataset):
    """Samples ``[start, start + count)`` of one FNO Darcy file, grid-subsampled by ``stride``.

    A sample holds ``pos`` [s², 2] (x, y in [0, 1]), ``x`` [s², 1] (permeability, 3 or
    12 in the FNO data) and ``y`` [s², 1] (pressure u), with s = (S - 1) // stride + 1.

    Args:
        root: folder of the ``.mat`` file.
        file: file name inside ``root``.
        start: first sample index in the file.
        count: number of samples.
        stride: keep every ``stride``-th grid point along each axis.
    """

    def __init__(self, root: str | Path, file: str, start: int, count: int, stride: int = 1) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.file, self.start, self.count, self.stride = file, start, count, stride
        super().__init__(root)

    def sample_keys(self) -> list[tuple[str, int]]:
        # the same sample of the same file content, whatever the stride or file name
        return [(self.raw_digests[self.file], self.start + i) for i in range(len(self))]

    def sample_name(self, index: int) -> str:
        return f"{Path(self.raw_dir) / self.file}: sample {self.start + index}"

    def expected_samples(self) -> int:
        return self.count

    @property
    def raw_file_names(self) -> list[str]:
        return [self.file]

    def cache_config(self) -> dict:
        return {"file": self.file, "start": self.start, "count": self.count, "stride": self.stride}

    def read_samples(self) -> Iterator[dict[str, np.ndarray]]:
        path = Path(self.raw_dir) / self.file
        arrays = read_darcy_mat(path)
        n = arrays["coeff"].shape[0]
        if self.start + self.count > n:
            raise DataFormatError(
                f"{path}: holds {n} samples, but samples {self.start}..{self.start + self.count - 1} were asked for "
                "(check n_train/n_val/n_test)"
            )
        s = arrays["coeff"].shape[1]
        grid = np.linspace(0.0, 1.0, s, dtype=np.float32)[:: self.stride]
        xx, yy = np.meshgrid(grid, grid, indexing="ij")
        pos = np.stack([xx.ravel(), yy.ravel()], axis=-1)
        for i in range(self.start, self.start + self.count):
            coeff = arrays["coeff"][i, :: self.stride, :: self.stride].reshape(-1, 1)
            sol = arrays["sol"][i, :: self.stride, :: self.stride].reshape(-1, 1)
            yield {"pos": pos, "x": coeff, "y": sol}


class DarcyDataModule(MeshDataModule):
    """Darcy flow: inputs (x, y, permeability), target pressure; FNO ``.mat`` files.

    Training uses the first ``n_train`` samples of ``train_file``, validation the next
    ``n_val`` of the same file (never the test file), testing the first ``n_test`` of
    ``test_file`` (which may have another resolution). When the files are absent and
    ``generate`` is on, they are made with the FNO recipe (``darcy_generate``) and written
    in the real layout, so the real loading path is always the one used. The options a file
    was generated with are kept in ``<root>/GENERATED.json``: with ``generate`` on, a file made
    with other ``gen_*`` options is refused by name (give each variant its own file names);
    real files, without a recorded recipe, are read as they are.

    Args:
        root: folder holding the ``.mat`` files.
        train_file: training file name (paper: ``piececonst_r421_N1024_smooth1.mat``).
        test_file: test file name (paper: ``piececonst_r421_N1024_smooth2.mat``).
        n_train: training samples.
        n_val: validation samples, taken after the training ones in ``train_file``.
        n_test: test samples.
        stride: grid subsampling of the training file (paper: 5, 421 -> 85).
        test_stride: grid subsampling of the test file (default: ``stride``).
        generate: make missing files with the FNO recipe.
        gen_resolution: grid size s of generated files.
        gen_seed: seed of generated data (the test file uses ``gen_seed + 1``).
        gen_permeability: (high, low) permeability of generated data, where the random field
            is >= 0 and < 0 (FNO: 12 and 3, contrast 4); another pair keeps the fields' geometry
            for a seed and changes the contrast.
        **kwargs: the loader options of ``MeshDataModule`` (batch_size, num_workers, ...).
    """

    pos_dim = 2
    in_dim = 3
    out_dim = 1

    def __init__(
        self,
        root: str = "data/darcy",
        train_file: str = "piececonst_r421_N1024_smooth1.mat",
        test_file: str = "piececonst_r421_N1024_smooth2.mat",
        n_train: int = 1000,
        n_val: int = 24,
        n_test: int = 200,
        stride: int = 5,
        test_stride: int | None = None,
        generate: bool = True,
        gen_resolution: int = 85,
        gen_seed: int = 0,
        gen_permeability: tuple[float, float] = (HIGH, LOW),
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.check_options(1, n_train=n_train, n_test=n_test, stride=stride)
        self.check_options(1, allow_none=True, test_stride=test_stride)
        self.check_options(0, n_val=n_val)
        # 3 points per side is the least with an interior point to solve for
        self.check_options(3, gen_resolution=gen_resolution)
        gen_permeability = check_permeability(gen_permeability, f"{type(self).__name__}: gen_permeability")
        if (Path(root) / train_file).resolve() == (Path(root) / test_file).resolve():
            raise ValueError(
                f"DarcyDataModule: train_file and test_file are the same file ({Path(root) / train_file}); "
                "the test samples must not be training samples"
            )
        self.train_file, self.test_file = train_file, test_file
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.stride = stride
        self.test_stride = test_stride or stride
        self.generate = generate
        self.gen_resolution, self.gen_seed = gen_resolution, gen_seed
        self.gen_permeability = gen_permeability

    def prepare_data(self) -> None:
        if self.predicting_files():
            return  # new meshes only: no training data is needed
        for file, count, seed in (
            (self.train_file, self.n_train + self.n_val, self.gen_seed),
            (self.test_file, self.n_test, self.gen_seed + 1),
        ):
            path = self.root / file
            recipe = {"gen_resolution": self.gen_resolution, "gen_seed": self.gen_seed,
                      "gen_permeability": self.gen_permeability}
            if path.exists():
                if self.generate:
                    check_recipe(self.root, file, recipe, type(self).__name__,
                                 "give this variant its own data.train_file/data.test_file names or data.root")
                continue
            if not self.generate:
                raise FileNotFoundError(f"Darcy file not found: {path} (set data.generate=true to make it)")
            coeff, sol = generate_darcy(count, self.gen_resolution, seed, self.gen_permeability)
            write_darcy_mat(path, coeff, sol)
            keep_recipe(self.root, file, recipe)

    def make_datasets(self, splits: list[str]) -> dict[str, Dataset]:
        # (file, first sample, count, stride) of each split: validation follows training in its file
        windows = {
            "train": (self.train_file, 0, self.n_train, self.stride),
            "val": (self.train_file, self.n_train, self.n_val, self.stride),
            "test": (self.test_file, 0, self.n_test, self.test_stride),
        }
        return {split: DarcyDataset(self.root, *windows[split]) for split in splits}
