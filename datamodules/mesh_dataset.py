"""Base PyG dataset for fields on meshes: raw files are processed once into a cache of
plain tensors, and each sample is served as ``Data(pos, x, y)``."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, Dataset

from datamodules.checks import DataFormatError, require_files


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class MeshDataset(Dataset):
    """Samples of point-wise fields, processed once from raw files into ``processed/``.

    Subclasses name their raw files (relative to ``root``), describe the options that
    change processing (``cache_config``) and yield samples from ``read_samples``: dicts
    with ``pos`` [N, d], optional ``x`` [N, f] (input fields) and ``y`` [N, o]
    (targets). The cache holds concatenated float32 tensors and offsets, loadable with
    ``torch.load(weights_only=True)``. Each ``Data`` also carries ``sample_id`` (its index).

    Args:
        root: folder holding the raw files; the cache goes to ``root/processed``.
        transform: optional per-access transform of a ``Data``.
    """

    def __init__(self, root: str | Path, transform: Callable[[Data], Data] | None = None) -> None:
        self._root_path = Path(root)
        super().__init__(str(root), transform=transform, log=False)
        self._data = torch.load(self.processed_paths[0], weights_only=True)
        self._ptr: Tensor = self._data["ptr"]

    # --- what subclasses provide -------------------------------------------------
    def read_samples(self) -> Iterator[dict[str, np.ndarray | Tensor]]:
        """Yield one dict per sample with ``pos``, ``y`` and optionally ``x``."""
        raise NotImplementedError

    def cache_config(self) -> dict[str, Any]:
        """Everything that changes the processed tensors (file names, split, stride...)."""
        return {"raw": self.raw_file_names}

    # --- PyG plumbing --------------------------------------------------------------
    @property
    def raw_dir(self) -> str:
        return str(self._root_path)

    @property
    def processed_dir(self) -> str:
        return str(self._root_path / "processed")

    @property
    def processed_file_names(self) -> list[str]:
        key = json.dumps(self.cache_config(), sort_keys=True, default=str)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        return [f"{type(self).__name__.lower()}_{digest}.pt"]

    def download(self) -> None:
        require_files(
            [Path(self.raw_dir) / f for f in self.raw_file_names],
            hint=f"{type(self).__name__} reads these from root={self.raw_dir}",
        )

    def process(self) -> None:
        pos, xs, ys, ptr = [], [], [], [0]
        for i, sample in enumerate(self.read_samples()):
            p = torch.as_tensor(sample["pos"], dtype=torch.float32)
            y = torch.as_tensor(sample["y"], dtype=torch.float32)
            x = sample.get("x")
            if p.dim() != 2 or y.dim() != 2 or p.shape[0] != y.shape[0] or p.shape[0] == 0:
                raise DataFormatError(
                    f"{type(self).__name__}: sample {i} has pos {tuple(p.shape)} and y {tuple(y.shape)}, "
                    "expected [N, d] and [N, o] with the same N > 0"
                )
            pos.append(p)
            ys.append(y)
            if x is not None:
                xs.append(torch.as_tensor(x, dtype=torch.float32).reshape(p.shape[0], -1))
            ptr.append(ptr[-1] + p.shape[0])
        if len(ptr) == 1:
            raise DataFormatError(f"{type(self).__name__} at {self.raw_dir}: no samples were read")
        if xs and len(xs) != len(pos):
            raise DataFormatError(f"{type(self).__name__}: some samples have input fields x and some not")
        data = {"pos": torch.cat(pos), "y": torch.cat(ys), "ptr": torch.tensor(ptr, dtype=torch.long)}
        if xs:
            data["x"] = torch.cat(xs)
        atomic_torch_save(data, Path(self.processed_paths[0]))

    def len(self) -> int:
        return self._ptr.numel() - 1

    def get(self, idx: int) -> Data:
        lo, hi = int(self._ptr[idx]), int(self._ptr[idx + 1])
        data = Data(pos=self._data["pos"][lo:hi], y=self._data["y"][lo:hi])
        if "x" in self._data:
            data.x = self._data["x"][lo:hi]
        data.sample_id = torch.tensor([idx])
        return data

    def field(self, name: str) -> Tensor:
        """All points of all samples for ``pos``, ``x`` or ``y``, concatenated: [sum N, C]."""
        return self._data[name]

    def has_inputs(self) -> bool:
        return "x" in self._data
