"""LPBF (FLARE paper): residual distortion of parts made by laser powder bed fusion, one
variable-size hexahedral mesh per part."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from datamodules.checks import DataFormatError, check_shape, finite_float32
from datamodules.lpbf_generate import PROXY_LABEL, PROXY_TAG, generate_lpbf_proxy
from datamodules.lpbf_predict import LPBFReader
from datamodules.mesh_datamodule import MeshDataModule
from datamodules.mesh_dataset import MeshDataset
from datamodules.numpy_files import npz_array, open_npz
from datamodules.recipes import check_recipe, keep_recipe

log = logging.getLogger(__name__)
SPLITS = ("train", "test")
PATTERN = "case*.npz"
# target name -> (npz key, column)
TARGETS = {
    "disp_z": ("disp", 2),
    "disp_x": ("disp", 0),
    "disp_y": ("disp", 1),
    "vmstr": ("vmstr", 0),
    "temp": ("temp", 0),
}
FIELD_WIDTH = {"disp": 3, "vmstr": 1, "temp": 1}


def list_cases(root: str | Path, split: str) -> list[str]:
    """Sorted ``split/case*.npz`` paths relative to ``root``; errors name the folder."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"LPBF {split} folder not found: {folder} (expected {Path(root)}/{{train,test}}/{PATTERN})"
        )
    files = sorted(p.name for p in folder.glob(PATTERN))
    if not files:
        raise DataFormatError(f"{folder}: empty split, no {PATTERN} files")
    return [f"{split}/{name}" for name in files]


def read_lpbf_case(path: str | Path, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """``pos`` (N, 3) and ``fields`` (each (N, width)) of one case, checked for keys,
    shapes and finite values.

    Only the numeric keys asked for are read, each with ``allow_pickle=False`` (an
    ``.npz`` member is read only when its key is): ``_metadata``, a pickled object array
    in the real files, is never read, so a crafted one cannot run code. It holds nothing
    training needs.
    """
    path = Path(path)
    with open_npz(path) as npz:
        pos = check_shape(npz_array(npz, "pos", path), (None, 3), path, "pos")
        out = {"pos": finite_float32(pos, path, "pos")}
        for key in fields:
            arr = npz_array(npz, key, path)
            if FIELD_WIDTH[key] == 1 and arr.ndim == 1:
                arr = arr[:, None]
            out[key] = finite_float32(check_shape(arr, (pos.shape[0], FIELD_WIDTH[key]), path, key), path, key)
    if pos.shape[0] == 0:
        raise DataFormatError(f"{path}: key 'pos' holds no nodes, expected (N, 3) with N > 0")
    return out


class LPBFDataset(MeshDataset):
    """Cases of the LPBF dataset (or of its proxy), one ``.npz`` file each.

    A sample holds ``pos`` [N, 3] (node coordinates in mm divided by ``scale``, the
    build-volume size) and ``y`` [N, T]: the ``targets`` in order, in the files' units
    (``disp_*`` in mm). Source: the FLARE paper's LPBF release (Netfabb simulations of
    Fusion 360 parts, huggingface.co/datasets/vedantpuri/LPBF_FLARE); licence: MIT.

    ==========  ============  ======  ==========================
    parts       nodes         in/out  split (folders)
    ==========  ============  ======  ==========================
    1390        736 - 47.5k   3 / 1   1100 train, 290 test
    ==========  ============  ======  ==========================

    Args:
        root: folder holding ``train/`` and ``test/``.
        files: case files relative to ``root``.
        targets: names from ``TARGETS`` (``disp_z``, ``vmstr``, ...).
        scale: divisors of x, y, z.
    """

    def __init__(self, root: str | Path, files: Sequence[str], targets: Sequence[str], scale: Sequence[float]) -> None:
        self.files, self.targets, self.scale = list(files), list(targets), [float(s) for s in scale]
        super().__init__(root)

    def sample_keys(self) -> list[str]:
        return [self.raw_digests[f] for f in self.files]  # one case per file: its content

    def sample_name(self, index: int) -> str:
        return str(Path(self.raw_dir) / self.files[index])

    def expected_samples(self) -> int:
        return len(self.files)

    @property
    def raw_file_names(self) -> list[str]:
        return self.files

    def cache_config(self) -> dict:
        return {"files": self.files, "targets": self.targets, "scale": self.scale}

    def output_name(self, idx: int) -> str:
        """The case file's stem (``case_0042``)."""
        return Path(self.files[idx]).stem

    def read_samples(self) -> Iterator[dict[str, np.ndarray]]:
        fields = sorted({TARGETS[t][0] for t in self.targets})
        scale = np.asarray(self.scale, dtype=np.float32)
        for name in self.files:
            case = read_lpbf_case(Path(self.raw_dir) / name, fields)
            y = np.stack([case[TARGETS[t][0]][:, TARGETS[t][1]] for t in self.targets], axis=-1)
            yield {"pos": case["pos"] / scale, "y": y}


class LPBFDataModule(MeshDataModule):
    """LPBF: input node coordinates (scaled by the build volume), target z-displacement
    (and optionally more fields, see ``targets``).

    The real data (FLARE paper, MIT licence) has 1100 training and 290 test cases in
    ``root/train`` and ``root/test``. Validation takes the last ``n_val`` training files
    (sorted by name), never test files. When the folders are absent and ``generate`` is
    on, an **LPBF proxy** is made here (``lpbf_generate``: inherent-strain linear
    elasticity of random voxel parts) in the same layout; its numbers are not LPBF results.

    Args:
        root: folder holding ``train/case*.npz`` and ``test/case*.npz``.
        targets: fields to predict, from ``disp_z`` (the paper's target), ``vmstr``,
            ``disp_x``, ``disp_y``, ``temp``.
        n_train: training cases (None: every training file not used for validation).
        n_val: validation cases, the last ones of ``train/``.
        n_test: test cases, the first ones of ``test/`` (None: all).
        build_volume: x, y, z divisors of the coordinates [mm] (the reference code's
            30, 30, 60: x, y in [-30, 30], parts up to 60 mm high).
        batch_size: training batch size (paper: 1).
        generate: make an LPBF proxy in ``root`` when ``train/`` or ``test/`` is absent.
        proxy_train: proxy cases written to ``train/``.
        proxy_test: proxy cases written to ``test/``.
        proxy_grid: voxels of a proxy part's bounding grid (x, y, z).
        proxy_voxel_size: proxy voxel edge [mm].
        proxy_seed: seed of proxy parts (the test folder uses ``proxy_seed + 1``).
        proxy_workers: processes used to generate the proxy.
        **kwargs: the other loader options of ``MeshDataModule`` (num_workers, train_points, ...).
    """

    in_dim = 3

    generated_as = "proxy"

    def __init__(
        self,
        root: str = "data/lpbf",
        targets: Sequence[str] = ("disp_z",),
        n_train: int | None = None,
        n_val: int = 50,
        n_test: int | None = None,
        build_volume: tuple[float, float, float] = (30.0, 30.0, 60.0),
        batch_size: int = 1,
        generate: bool = False,
        proxy_train: int = 100,
        proxy_test: int = 25,
        proxy_grid: tuple[int, int, int] = (16, 16, 16),
        proxy_voxel_size: float = 2.5,
        proxy_seed: int = 0,
        proxy_workers: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, **kwargs)
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or not targets:
            raise ValueError(
                f"LPBFDataModule: targets must be a non-empty list from {sorted(TARGETS)}, got {list(targets)}"
            )
        self.check_options(1, allow_none=True, n_train=n_train, n_test=n_test)
        self.check_options(0, n_val=n_val)
        if generate:
            self.check_options(1, proxy_train=proxy_train, proxy_test=proxy_test, proxy_workers=proxy_workers)
            if len(proxy_grid) != 3 or min(proxy_grid) < 2:
                raise ValueError(f"LPBFDataModule: proxy_grid must be 3 sizes >= 2 voxels, got {proxy_grid}")
            if proxy_voxel_size <= 0:
                raise ValueError(f"LPBFDataModule: proxy_voxel_size must be > 0 mm, got {proxy_voxel_size}")
        if len(build_volume) != 3 or min(build_volume) <= 0:
            raise ValueError(f"LPBFDataModule: build_volume must be 3 positive sizes, got {build_volume}")
        self.targets = list(targets)
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.build_volume = tuple(float(s) for s in build_volume)
        self.generate = generate
        self.proxy_counts = {"train": proxy_train, "test": proxy_test}
        self.proxy_grid, self.proxy_voxel_size = tuple(proxy_grid), proxy_voxel_size
        self.proxy_seed, self.proxy_workers = proxy_seed, proxy_workers

    @property
    def out_dim(self) -> int:
        return len(self.targets)

    @property
    def target_names(self) -> list[str]:
        return list(self.targets)

    def predict_reader(self) -> LPBFReader:
        """``case*.npz`` parts (hexahedra kept for the output) or plain point sets, in mm."""
        return LPBFReader(self.targets, self.build_volume)

    def prepare_data(self) -> None:
        if self.predicting_files():
            return  # new meshes only: no training data is needed
        if not self.generate:
            return  # reading reports a missing folder by name
        recipe = {"proxy_grid": self.proxy_grid, "proxy_voxel_size": self.proxy_voxel_size, "proxy_seed": self.proxy_seed}
        for offset, split in enumerate(SPLITS):
            folder = self.root / split
            if folder.is_dir() and any(folder.iterdir()):
                check_recipe(self.root, f"{split}/", recipe, type(self).__name__)
                continue
            log.warning(
                "LPBF proxy: writing %d %s cases to %s (%s)", self.proxy_counts[split], split, folder, PROXY_LABEL
            )
            generate_lpbf_proxy(
                folder, self.proxy_counts[split], self.proxy_seed + offset, self.proxy_workers,
                self.proxy_grid, self.proxy_voxel_size,
            )
            keep_recipe(self.root, f"{split}/", recipe)

    def split_files(self) -> dict[str, list[str]]:
        """Case files of each split, checked against the requested counts."""
        train_files, test_files = list_cases(self.root, "train"), list_cases(self.root, "test")
        n_train = len(train_files) - self.n_val if self.n_train is None else self.n_train
        if n_train < 1 or n_train + self.n_val > len(train_files):
            raise DataFormatError(
                f"{self.root / 'train'}: holds {len(train_files)} cases; n_train = {self.n_train} and "
                f"n_val = {self.n_val} need at least {max(n_train, 1) + self.n_val}"
            )
        n_test = len(test_files) if self.n_test is None else self.n_test
        if n_test > len(test_files):
            raise DataFormatError(
                f"{self.root / 'test'}: holds {len(test_files)} cases; n_test = {n_test} were asked for"
            )
        if any(PROXY_TAG in f for f in train_files + test_files):
            log.warning("LPBF proxy data in %s: results on it are proxy numbers, not LPBF results", self.root)
        return {
            "train": train_files[:n_train],
            "val": train_files[len(train_files) - self.n_val :] if self.n_val else [],
            "test": test_files[:n_test],
        }

    def make_datasets(self, splits: list[str]) -> dict[str, Dataset]:
        files = self.split_files()
        return {split: LPBFDataset(self.root, files[split], self.targets, self.build_volume) for split in splits}
