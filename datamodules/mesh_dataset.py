"""Base PyG dataset for fields on meshes: raw files are processed once into a verified,
memory-mapped cache (``mesh_cache``), and each sample is served as ``Data(pos, x, y)``."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, Dataset

from datamodules.checks import DataFormatError, finite_float32, require_files
from datamodules.content_hash import raw_file_digests
from datamodules.mesh_cache import load_cache, write_cache
from datamodules.progress import is_rank_zero, progress
from flare_lightning.training.normalizer import channel_moments

# Optional per-point geometry of surface cells, kept for integrated quantities (forces).
EXTRA_FIELDS = ("normals", "areas")


def checked_sample(sample: Mapping[str, Any], name: str) -> dict[str, Tensor]:
    """``pos`` [N, d], ``y`` [N, o] and, where given, ``x`` and ``EXTRA_FIELDS`` [N, ·] of one
    read sample as float32 tensors, checked finite, of one N > 0 and with a target that is not
    zero everywhere (errors name the sample)."""
    p = torch.from_numpy(finite_float32(sample["pos"], name, "pos"))
    y = torch.from_numpy(finite_float32(sample["y"], name, "y"))
    if p.dim() != 2 or y.dim() != 2 or p.shape[0] != y.shape[0] or p.shape[0] == 0:
        raise DataFormatError(
            f"{name}: has pos {tuple(p.shape)} and y {tuple(y.shape)}, expected [N, d] and [N, o] with the same N > 0"
        )
    if not bool(y.any()):
        raise DataFormatError(
            f"{name}: the target y is zero everywhere, so its relative L2 error (the loss and the metric) "
            "is undefined; check the data (a failed solve?)"
        )
    out = {"pos": p, "y": y}
    for key in ("x", *EXTRA_FIELDS):
        if sample.get(key) is not None:
            out[key] = torch.from_numpy(finite_float32(sample[key], name, key)).reshape(p.shape[0], -1)
    return out


def sample_moments(fields: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``channel_moments`` of one sample's model inputs (``pos``, then ``x``) and of its targets."""
    inputs = torch.cat([fields["pos"], fields["x"]], dim=-1) if "x" in fields else fields["pos"]
    return channel_moments(inputs), channel_moments(fields["y"])


class MeshDataset(Dataset):
    """Samples of point-wise fields, processed once from raw files into ``processed/``.

    Subclasses name their raw files (relative to ``root``), describe the options that
    change processing (``cache_config``) and yield samples from ``read_samples``: dicts
    with ``pos`` [N, d], optional ``x`` [N, f] (input fields) and ``y`` [N, o]
    (targets), and optionally ``normals`` [N, 3] and ``areas`` [N, 1] (``EXTRA_FIELDS``:
    kept for integrated quantities such as forces, never model inputs). The cache holds concatenated float32 tensors and offsets (``mesh_cache``):
    named by the options, checked against the raw files' content digests and its own
    checksums on every load, rebuilt (with a warning) when stale or damaged, and
    memory-mapped. Each ``Data`` also carries ``sample_id`` (its index).

    PyG's ``Dataset`` runs ``process()`` and then unpickles ``processed/pre_transform.pt``
    and ``pre_filter.pt`` with ``weights_only=False``: a data folder could run code. This
    class defines neither ``download`` nor ``process``, so PyG reads nothing from disk.

    Args:
        root: folder holding the raw files; the cache goes to ``root/processed``.
        transform: optional per-access transform of a ``Data``.
    """

    def __init__(self, root: str | Path, transform: Callable[[Data], Data] | None = None) -> None:
        self._root_path = Path(root)
        super().__init__(str(root), transform=transform, log=is_rank_zero())
        self.check_raw_files()
        self.raw_digests = raw_file_digests(type(self).__name__, self._root_path, self.raw_file_names)
        self._data = self._load_or_build()
        self._ptr: Tensor = self._data["ptr"]

    # --- what subclasses provide -------------------------------------------------
    def read_samples(self) -> Iterator[dict[str, np.ndarray | Tensor]]:
        """Yield one dict per sample with ``pos``, ``y`` and optionally ``x``."""
        raise NotImplementedError

    def cache_config(self) -> dict[str, Any]:
        """Every option that changes the processed tensors (file names, split, stride...);
        the raw files' content is added by this class."""
        return {"raw": self.raw_file_names}

    def sample_keys(self) -> list[Hashable]:
        """One identity per sample, equal for the same sample read through another split
        (used to refuse overlapping splits); by default (file digest, index in the files)."""
        digests = tuple(self.raw_digests[f] for f in self.raw_file_names)
        return [(digests, i) for i in range(len(self))]

    def sample_name(self, index: int) -> str:
        """Where sample ``index`` comes from, for error messages."""
        return f"{type(self).__name__} at {self.raw_dir}: sample {index}"

    def expected_samples(self) -> int | None:
        """Number of samples ``read_samples`` yields, if known (for the progress bar)."""
        return None

    # --- PyG plumbing --------------------------------------------------------------
    @property
    def raw_dir(self) -> str:
        return str(self._root_path)

    @property
    def processed_dir(self) -> str:
        return str(self._root_path / "processed")

    @property
    def processed_file_names(self) -> list[str]:
        digest = hashlib.blake2b(self._config_json().encode(), digest_size=6).hexdigest()
        return [f"{type(self).__name__.lower()}_{digest}.pt"]

    def _config_json(self) -> str:
        return json.dumps(self.cache_config(), sort_keys=True, default=str)

    def check_raw_files(self) -> None:
        """Raise ``FileNotFoundError`` naming every missing raw file."""
        require_files(
            [Path(self.raw_dir) / f for f in self.raw_file_names],
            hint=f"{type(self).__name__} reads these from root={self.raw_dir}",
        )

    def _load_or_build(self) -> dict[str, Tensor]:
        path = Path(self.processed_paths[0])
        meta = {"config": self._config_json(), "raw": self.raw_digests}
        fields, why = load_cache(path, meta)
        if fields is not None:
            return fields
        if why != "absent":
            warnings.warn(f"{type(self).__name__}: cache {path} is {why}; rebuilding it from the raw files", stacklevel=3)
        self.build_cache(path, meta)
        fields, why = load_cache(path, meta)
        if fields is None:
            raise RuntimeError(f"{path}: the cache just written does not verify ({why})")
        return fields

    def build_cache(self, path: Path, meta: dict[str, Any]) -> None:
        """Read every sample, cast to float32, check, and write the cache to ``path``."""
        parts: dict[str, list[Tensor]] = {}
        ptr = [0]
        samples = progress(
            self.read_samples(), f"{type(self).__name__}: processing into {path.name}",
            total=self.expected_samples(), unit="sample",
        )
        for i, sample in enumerate(samples):
            for key, value in checked_sample(sample, self.sample_name(i)).items():
                parts.setdefault(key, []).append(value)
            ptr.append(ptr[-1] + parts["pos"][-1].shape[0])
        if len(ptr) == 1:
            raise DataFormatError(f"{type(self).__name__} at {self.raw_dir}: no samples were read")
        for key, values in parts.items():
            if len(values) != len(ptr) - 1:
                what = "input fields x" if key == "x" else key
                raise DataFormatError(f"{type(self).__name__}: some samples have {what} and some not")
        data = {key: torch.cat(values) for key, values in parts.items()}
        write_cache(path, {**data, "ptr": torch.tensor(ptr, dtype=torch.long)}, meta)

    def len(self) -> int:
        return self._ptr.numel() - 1

    def get(self, idx: int) -> Data:
        lo, hi = int(self._ptr[idx]), int(self._ptr[idx + 1])
        data = Data(pos=self._data["pos"][lo:hi], y=self._data["y"][lo:hi])
        if "x" in self._data:
            data.x = self._data["x"][lo:hi]
        for key in EXTRA_FIELDS:
            if key in self._data:
                data[key] = self._data[key][lo:hi]
        data.sample_id = torch.tensor([idx])
        return data

    def sample_moments(self, index: int) -> tuple[Tensor, Tensor]:
        """``channel_moments`` of sample ``index``'s inputs and targets (read from the memory map)."""
        lo, hi = int(self._ptr[index]), int(self._ptr[index + 1])
        return sample_moments({k: self._data[k][lo:hi] for k in ("pos", "x", "y") if k in self._data})

    def field(self, name: str) -> Tensor:
        """All points of all samples for ``pos``, ``x`` or ``y``, concatenated: [sum N, C]
        (a memory map of the cache: slice it, do not copy it whole)."""
        return self._data[name]
