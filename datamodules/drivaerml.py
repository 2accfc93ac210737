"""DrivAerML (road-car aerodynamics): surface pressure (and wall shear) on 484 morphed
DrivAer notchback cars, as point clouds of surface cell centres."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from datamodules.checks import DataFormatError
from datamodules.drivaerml_io import (
    PROXY_LABEL,
    Q_INF,
    is_proxy_file,
    list_runs,
    read_split_file,
)
from datamodules.drivaerml_predict import DrivAerMLReader
from datamodules.drivaerml_proxy import generate_proxy_runs
from datamodules.mesh_datamodule import MeshDataModule
from datamodules.mesh_dataset import EXTRA_FIELDS
from datamodules.recipes import check_recipe, keep_recipe
from datamodules.run_files import RunFilesDataset

Targets = Literal["pressure", "pressure_wss"]
Source = Literal["npz", "vtp"]
TARGET_DIMS = {"pressure": 1, "pressure_wss": 4}
NPZ_FOLDERS = ("train", "test", "")
# Full-scale DrivAer frontal area [m²], the constant reference of the coefficients
# (docs/datasets/drivaerml.md says where the value comes from; per-run areas differ).
REFERENCE_AREA = 2.16  # where a run named by a split file may live


class DrivAerMLDataset(RunFilesDataset):
    """Surface fields of DrivAerML runs (or of DrivAerML proxy runs, same layout).

    A sample holds ``pos`` [N, 3], the surface cell centres [m], ``normals`` [N, 3] (into
    the body) and ``areas`` [N, 1] [m²] of the cells where the files give them (raw
    ``.vtp``: from the mesh; archives: keys ``surface_normals``/``surface_areas`` if
    present, otherwise not available), and ``y`` [N, 1] = p
    or [N, 4] = (p, τx, τy, τz): time-averaged kinematic pressure and wall shear stress
    [m²/s²] (divided by the density), or Cp = p / q∞ and Cf = τ / q∞ (q∞ = 756.18 m²/s²,
    U∞ = 38.889 m/s) with ``pressure_as_cp``. Real runs have ~8.8M cells; the paper
    trains on 40k points per run. Each run is processed once into its own cache, which
    readers memory-map (``RunFilesDataset``): host memory holds the runs being read, not
    the dataset.

    Source: Ashton et al., "DrivAerML" (arXiv 2408.11969), CC-BY-SA 4.0,
    huggingface.co/datasets/neashton/drivaerml. Paper split: 387 train / 97 test runs.

    Args:
        root: data folder; ``files`` are relative to it.
        files: one ``run_<i>.npz`` archive or ``run_<i>/boundary_<i>.vtp`` surface per sample.
        run_ids: the DrivAerML run id of each file (kept as ``self.run_ids``).
        targets: ``pressure`` (as in the paper) or ``pressure_wss``.
        pressure_as_cp: divide all targets by q∞ (Cp, and Cf for wall shear).
        num_points: keep this many random points of each run, the same subset every time
            (seeded by ``seed`` and the run id); None keeps all.
        seed: seed of the point subsets.
        processes: processes that build missing run caches (one run in memory each).
    """

    def __init__(
        self,
        root: str | Path,
        files: list[str],
        run_ids: list[int],
        targets: Targets = "pressure",
        pressure_as_cp: bool = False,
        num_points: int | None = None,
        seed: int = 0,
        processes: int = 1,
    ) -> None:
        if len(files) != len(run_ids):
            raise ValueError(f"DrivAerMLDataset: {len(files)} files but {len(run_ids)} run ids")
        _check_option("targets", targets, TARGET_DIMS)
        if num_points is not None and num_points < 1:
            raise ValueError(f"DrivAerMLDataset: num_points must be >= 1 or None, got {num_points}")
        self.run_ids = list(run_ids)
        self.targets, self.pressure_as_cp, self.num_points, self.seed = targets, pressure_as_cp, num_points, seed
        super().__init__(root, files, processes)

    def sample_name(self, index: int) -> str:
        return f"{self.root / self.files[index]} (run {self.run_ids[index]})"

    def cache_config(self) -> dict:
        return {
            "targets": self.targets,
            "cp": self.pressure_as_cp,
            "num_points": self.num_points,
            "seed": self.seed,
            "geometry": 1,  # caches also hold cell normals and areas where the files give them
        }

    def file_config(self, index: int) -> dict:
        return {"file": self.files[index], "run_id": self.run_ids[index]}

    def read_file(self, index: int) -> dict[str, np.ndarray]:
        reader = DrivAerMLReader(TARGET_DIMS[self.targets], self.pressure_as_cp, strict=True)
        raw = reader(self.root / self.files[index])
        sample = {k: v for k, v in raw.items() if k in ("pos", "y", *EXTRA_FIELDS)}
        if self.num_points is not None and len(sample["pos"]) > self.num_points:
            rng = np.random.default_rng([self.seed, self.run_ids[index]])
            keep = np.sort(rng.choice(len(sample["pos"]), size=self.num_points, replace=False))
            sample = {k: v[keep] for k, v in sample.items()}
        return sample

    def output_name(self, idx: int) -> str:
        """``run_<i>``: the DrivAerML run id of sample ``idx``."""
        return f"run_{self.run_ids[idx]}"


class DrivAerMLDataModule(MeshDataModule):
    """DrivAerML surface pressure (optionally + wall shear) from surface cell centres xyz.

    Real data (``proxy: false``) is read from ``root``, in one of two layouts:

    - ``source: npz``: presampled archives ``root/{train,test}/run_<i>.npz`` (keys
      ``surface_mesh_centers`` (N, 3), ``surface_fields`` (N, 4) = [p, τx, τy, τz]);
    - ``source: vtp``: raw surfaces ``root/run_<i>/boundary_<i>.vtp`` (cell arrays
      ``pMeanTrim``, ``wallShearStressMeanTrim``; needs ``vtk``, and a ``split_file``).

    Without ``split_file`` the npz folders ``train/`` and ``test/`` are the split. A split
    file (JSON ``{"train": [ids], "test": [ids]}``, relative to ``root`` unless absolute)
    picks runs by id from ``train/``, ``test/`` or ``root``. Validation uses the last
    ``n_val`` training runs; ``n_val: 0`` trains on all of them (the paper's 387)
    with no validation at all: the last checkpoint is the one tested, and test data is
    never used for validation or checkpoint selection.

    Each run is processed once into its own cache (``DrivAerMLDataset``) that the loader
    workers memory-map and subsample (``train_points``) one run at a time, so host memory is
    bounded by ``num_workers``, not by the number of runs; on the first start ``num_workers``
    processes build the caches, one run each. Validation and test read each run in full.

    With ``proxy: true`` it trains on the DrivAerML proxy (potential flow) instead: random
    car-like bodies with panel-method pressure, written to ``root`` in the npz layout on
    first use (see ``datamodules.drivaerml_proxy``). Its results are not DrivAerML results.

    Args:
        root: data folder (real files, or where the proxy is written).
        split_file: optional JSON split of run ids.
        source: ``npz`` (presampled archives) or ``vtp`` (raw boundary surfaces).
        targets: ``pressure`` (paper: output 1) or ``pressure_wss`` (output 4).
        pressure_as_cp: train on Cp = p / 756.18 (and Cf = τ / 756.18) instead of m²/s².
        num_points: fixed random points kept per run for all splits (paper: 40000; None: all).
        n_val: training runs held out for validation (0: no validation; test the last checkpoint).
        proxy: use (and if missing, generate) the DrivAerML proxy (potential flow).
        proxy_train_runs: proxy bodies for training and validation.
        proxy_test_runs: proxy bodies for testing.
        proxy_panels: panels per proxy body (solve time grows as its square: 2000 ~ 2 s).
        proxy_points: surface points written per proxy body.
        proxy_seed: seed of the proxy bodies.
        batch_size: training batch size (paper: 1).
        reference_area: A_ref [m²] of the drag and lift coefficients (Cd = F_x / (q∞ A_ref),
            Cl = F_z / (q∞ A_ref)); see docs/datasets/drivaerml.md for the value's source.
        **kwargs: the other loader options of ``MeshDataModule`` (num_workers, train_points, ...;
            ``seed`` also seeds the ``num_points`` subsets).
    """

    in_dim = 3

    def __init__(
        self,
        root: str = "data/drivaerml",
        split_file: str | None = None,
        source: Source = "npz",
        targets: Targets = "pressure",
        pressure_as_cp: bool = False,
        num_points: int | None = None,
        n_val: int = 8,
        proxy: bool = False,
        proxy_train_runs: int = 40,
        proxy_test_runs: int = 10,
        proxy_panels: int = 2000,
        proxy_points: int = 8000,
        proxy_seed: int = 0,
        batch_size: int = 1,
        reference_area: float = REFERENCE_AREA,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, **kwargs)
        if reference_area <= 0:
            raise ValueError(f"DrivAerMLDataModule: reference_area must be > 0 m², got {reference_area}")
        self.reference_area = reference_area
        _check_option("targets", targets, TARGET_DIMS)
        _check_option("source", source, ("npz", "vtp"))
        self.check_options(0, n_val=n_val)
        self.check_options(1, allow_none=True, num_points=num_points)
        if proxy:
            self.check_options(1, proxy_panels=proxy_panels, proxy_points=proxy_points)
        if proxy and (split_file is not None or source != "npz"):
            raise ValueError(
                "DrivAerMLDataModule: the proxy is npz data split by proxy_train_runs/proxy_test_runs; "
                "unset data.split_file and data.source with data.proxy=true"
            )
        for name, value in (("proxy_train_runs", proxy_train_runs), ("proxy_test_runs", proxy_test_runs)):
            if proxy and value < 1:
                raise ValueError(f"DrivAerMLDataModule: {name} must be >= 1, got {value}")
        if proxy and n_val >= proxy_train_runs:
            raise ValueError(f"DrivAerMLDataModule: n_val={n_val} leaves no training runs of {proxy_train_runs}")
        self.split_file, self.source, self.targets = split_file, source, targets
        self.pressure_as_cp, self.num_points, self.n_val = pressure_as_cp, num_points, n_val
        self.proxy, self.proxy_seed = proxy, proxy_seed
        self.proxy_train_runs, self.proxy_test_runs = proxy_train_runs, proxy_test_runs
        self.proxy_panels, self.proxy_points = proxy_panels, proxy_points

    @property
    def out_dim(self) -> int:
        return TARGET_DIMS[self.targets]

    @property
    def data_source(self) -> str:
        return "proxy" if self.proxy else "files"

    @property
    def target_names(self) -> list[str]:
        """Names of the output channels (pressure, then wall shear stress)."""
        names = ["Cp", "Cf_x", "Cf_y", "Cf_z"] if self.pressure_as_cp else ["p", "tau_x", "tau_y", "tau_z"]
        return names[: self.out_dim]

    @property
    def force_reference(self) -> dict[str, float]:
        """q∞ in the targets' units and A_ref, for the drag and lift coefficients (computed by
        ``flare_lightning.forces.metrics`` from the cell ``normals`` and ``areas`` batches carry)."""
        return {"dynamic_pressure": 1.0 if self.pressure_as_cp else Q_INF, "reference_area": self.reference_area}

    def predict_reader(self) -> DrivAerMLReader:
        """Raw ``.vtp`` surfaces, presampled ``run_<i>.npz`` archives or plain point sets."""
        return DrivAerMLReader(self.out_dim, self.pressure_as_cp)

    @property
    def label(self) -> str:
        """What the data is, for logs and reports: DrivAerML or the proxy."""
        return PROXY_LABEL if self.proxy else "DrivAerML"

    # --- data on disk ------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.predicting_files():
            return  # new meshes only: no training data is needed
        if self.proxy:
            self._check_proxy_folder()
            split = self._proxy_split()
            recipe = {"proxy_panels": self.proxy_panels, "proxy_points": self.proxy_points,
                      "proxy_seed": self.proxy_seed}
            for name, ids in split.items():
                # runs made with other options are refused, also before new runs are added beside them
                check_recipe(self.root, f"{name}/", recipe, type(self).__name__)
                missing = [i for i in ids if not (self.root / name / f"run_{i}.npz").exists()]
                if missing:
                    rank_zero_info(
                        f"Generating {PROXY_LABEL} data (not DrivAerML): {len(missing)} {name} bodies "
                        f"in {self.root / name}, about {self.proxy_panels / 1000:.0f} s each"
                    )
                    generate_proxy_runs(
                        self.root / name, missing, self.proxy_panels, self.proxy_points, self.proxy_seed
                    )
                    keep_recipe(self.root, f"{name}/", recipe)
        self.split_runs()

    def _proxy_split(self) -> dict[str, list[int]]:
        n = self.proxy_train_runs
        return {"train": list(range(1, n + 1)), "test": list(range(n + 1, n + self.proxy_test_runs + 1))}

    def _check_proxy_folder(self) -> None:
        """Refuse to write proxy runs next to files that are not proxy runs."""
        for name in ("train", "test"):
            for i in list_runs(self.root / name):
                path = self.root / name / f"run_{i}.npz"
                if not is_proxy_file(path):
                    raise DataFormatError(
                        f"{path}: data.proxy=true, but this is not a {PROXY_LABEL} file (no 'proxy' key); "
                        "point data.root at a separate folder for the proxy, or set data.proxy=false"
                    )

    def split_runs(self) -> dict[str, list[tuple[int, str]]]:
        """``train`` and ``test`` lists of (run id, file relative to root), every file checked to exist."""
        if self.proxy:
            split = self._proxy_split()
            return {k: [(i, f"{k}/run_{i}.npz") for i in ids] for k, ids in split.items()}
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"DrivAerML data folder not found: {self.root}. Download DrivAerML "
                "(huggingface.co/datasets/neashton/drivaerml) and set data.root, or set data.proxy=true "
                "to train on the DrivAerML proxy (potential flow)"
            )
        if self.split_file is None:
            if self.source == "vtp":
                raise ValueError(
                    'DrivAerMLDataModule: source=vtp needs data.split_file (JSON {"train": [...], "test": [...]})'
                )
            runs = {}
            for name in ("train", "test"):
                folder = self.root / name
                if not folder.is_dir():
                    raise FileNotFoundError(f"DrivAerML: folder {folder} not found (expected {name}/run_<i>.npz files)")
                ids = list_runs(folder)
                if not ids:
                    raise DataFormatError(f"DrivAerML: no run_<i>.npz files in {folder} (the {name} split is empty)")
                runs[name] = [(i, f"{name}/run_{i}.npz") for i in ids]
        else:
            runs = self._runs_from_split_file()
        self._refuse_proxy_files(runs)
        return runs

    def _runs_from_split_file(self) -> dict[str, list[tuple[int, str]]]:
        path = Path(self.split_file)
        path = path if path.is_absolute() else self.root / path
        split = read_split_file(path)
        runs, absent = {}, []
        for name, ids in split.items():
            runs[name] = []
            for i in ids:
                if self.source == "vtp":
                    found = [f"run_{i}/boundary_{i}.vtp"]
                else:
                    found = [str(Path(d) / f"run_{i}.npz") for d in NPZ_FOLDERS]
                found = [f for f in found if (self.root / f).exists()]
                if found:
                    runs[name].append((i, found[0]))
                else:
                    absent.append(i)
        if absent:
            where = "run_<i>/boundary_<i>.vtp" if self.source == "vtp" else "{train,test,.}/run_<i>.npz"
            raise DataFormatError(
                f"{path}: names {len(absent)} run(s) with no file under {self.root} ({where}): {_ids(absent)}"
            )
        return runs

    def _refuse_proxy_files(self, runs: dict[str, list[tuple[int, str]]]) -> None:
        if self.source != "npz":
            return
        for _, file in runs["train"] + runs["test"]:
            if is_proxy_file(self.root / file):
                raise DataFormatError(
                    f"{self.root / file}: this is {PROXY_LABEL} data, not DrivAerML; set data.proxy=true "
                    "(results on it must not be reported as DrivAerML)"
                )

    # --- datasets ----------------------------------------------------------------------
    def _dataset(self, runs: list[tuple[int, str]]) -> DrivAerMLDataset:
        return DrivAerMLDataset(
            self.root,
            files=[f for _, f in runs],
            run_ids=[i for i, _ in runs],
            targets=self.targets,
            pressure_as_cp=self.pressure_as_cp,
            num_points=self.num_points,
            seed=self.seed,
            processes=max(1, self.num_workers),  # the loader's workers bound memory: one run each
        )

    def make_datasets(self, splits: list[str]) -> dict[str, Dataset]:
        runs = self.split_runs()
        train, test = runs["train"], runs["test"]
        if self.n_val >= len(train):
            raise ValueError(f"DrivAerMLDataModule: n_val={self.n_val} leaves none of the {len(train)} training runs")
        train, val = (train[: -self.n_val], train[-self.n_val :]) if self.n_val else (train, [])
        _refuse_shared_runs({"train": train, "val": val, "test": test}, self.root)
        if "train" in splits:
            rank_zero_info(f"{self.label}: {len(train)} train / {len(val)} val / {len(test)} test runs from {self.root}")
        chosen = {"train": train, "val": val, "test": test}
        return {split: self._dataset(chosen[split]) for split in splits}


def _refuse_shared_runs(splits: dict[str, list[tuple[int, str]]], root: Path) -> None:
    """A DrivAerML run id is one car: it may sit in one split only (e.g. not in both
    ``train/`` and ``test/``), whatever its files hold."""
    seen: dict[int, tuple[str, str]] = {}
    for split, runs in splits.items():
        for run_id, file in runs:
            other = seen.setdefault(run_id, (split, file))
            if other[0] != split:
                raise DataFormatError(
                    f"DrivAerML: run {run_id} is in both the {other[0]} split ({root / other[1]}) and the "
                    f"{split} split ({root / file}); the splits must not share runs"
                )


def _check_option(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"DrivAerML: {name} must be one of {sorted(allowed)}, got {value!r}")


def _ids(ids: list[int], most: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:most])
    return shown + (f", ... ({len(ids) - most} more)" if len(ids) > most else "")
