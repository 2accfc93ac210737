"""Datasets of one raw file per sample (DrivAerML runs): each file is processed once into its
own uncompressed cache that readers memory-map, so a process holds the runs it is reading,
never the dataset (host memory is bounded by the loader workers, not by the number of runs)."""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_geometric.data import Data

from datamodules.checks import DataFormatError, require_files
from datamodules.content_hash import StampMemo, file_stamp, raw_file_digests
from datamodules.generate_util import parallel_map
from datamodules.mesh_cache import load_cache, write_cache
from datamodules.mesh_dataset import EXTRA_FIELDS, checked_sample, sample_moments

VERIFIED_MEMO = "verified.json"  # in a cache folder: the stamps at which each run's cache verified
VERIFIED = "checksums verified"


class RunFilesDataset(Dataset):
    """Samples read from one raw file each, processed once into one cache per file.

    Subclasses describe the options that change processing (``cache_config``) and read one
    file (``read_file(index)``: a dict with ``pos`` [N, d], ``y`` [N, o] and optionally ``x``
    [N, f], ``normals`` [N, 3], ``areas`` [N, 1], as ``MeshDataset.read_samples`` yields).
    The cache of file ``f`` is ``root/processed/<class>_<options digest>/<f, / as __>.pt`` in
    ``mesh_cache``'s format (float32 fields, checksums, the raw file's content digest),
    written atomically, plus the channel moments of the run's inputs and targets, so that
    normalisation statistics never read the points again.

    At construction every cache is checked (options, raw content, completeness); its bytes
    are read against the checksums once per file version (the stamps that verified are kept
    in ``verified.json``, as the raw digests are in ``raw_digests.json``). An absent, stale,
    foreign or damaged cache is (re)built, with a warning unless absent, by ``processes``
    processes at a time, each holding one run. Reading a sample memory-maps its cache.

    Args:
        root: folder the ``files`` are relative to; caches go to ``root/processed``.
        files: one raw file per sample, relative to ``root``.
        processes: processes that build missing caches (one run in memory each).
        transform: optional per-access transform of a ``Data`` (the training subsample).
    """

    def __init__(
        self,
        root: str | Path,
        files: list[str],
        processes: int = 1,
        transform: Callable[[Data], Data] | None = None,
    ) -> None:
        self.root, self.files, self.transform = Path(root), list(files), transform
        owner = type(self).__name__
        require_files([self.root / f for f in self.files], hint=f"{owner} reads these from root={self.root}")
        self.raw_digests = raw_file_digests(owner, self.root, self.files)
        config = json.dumps(self.cache_config(), sort_keys=True, default=str)
        self.cache_dir = self.root / "processed" / f"{owner.lower()}_{hashlib.blake2b(config.encode(), digest_size=6).hexdigest()}"
        self._moments: list[tuple[Tensor, Tensor]] = []
        self.sample_sizes: list[int] = []  # points of each sample
        self._check_or_build(processes)

    # --- what subclasses provide -------------------------------------------------
    def read_file(self, index: int) -> dict[str, np.ndarray | Tensor]:
        """The sample of ``files[index]``: ``pos``, ``y`` and optionally ``x``, ``normals``, ``areas``."""
        raise NotImplementedError

    def cache_config(self) -> dict[str, Any]:
        """Every option that changes the processed fields (the cache folder is named by it)."""
        return {}

    def file_config(self, index: int) -> dict[str, Any]:
        """What identifies sample ``index`` in its cache, beside ``cache_config``."""
        return {"file": self.files[index]}

    def sample_name(self, index: int) -> str:
        """Where sample ``index`` comes from, for error messages."""
        return str(self.root / self.files[index])

    # --- caches ------------------------------------------------------------------------
    def cache_path(self, index: int) -> Path:
        return self.cache_dir / (self.files[index].replace("/", "__") + ".pt")

    def cache_meta(self, index: int) -> dict[str, Any]:
        config = {**self.cache_config(), **self.file_config(index)}
        file = self.files[index]
        return {"config": json.dumps(config, sort_keys=True, default=str), "raw": {file: self.raw_digests[file]}}

    def _check_or_build(self, processes: int) -> None:
        memo = StampMemo(self.cache_dir / VERIFIED_MEMO)
        found: dict[int, tuple[tuple[Tensor, Tensor], int]] = {}
        for i in range(len(self)):
            path = self.cache_path(i)
            stamp = file_stamp(path) if path.exists() else None
            trusted = stamp is not None and memo.get(stamp) == VERIFIED
            fields, why = load_cache(path, self.cache_meta(i), verify=not trusted)
            if fields is None:
                if why != "absent":
                    warnings.warn(f"{type(self).__name__}: cache {path} is {why}; rebuilding it from the raw file",
                                  stacklevel=3)
                continue
            if not trusted:
                memo.put(stamp, VERIFIED)
            found[i] = _summary(fields)  # the memory map is released here: one run at a time
        todo = [i for i in range(len(self)) if i not in found]
        if todo:
            built = parallel_map(functools.partial(build_run_cache, self), todo, processes,
                                 desc=f"{type(self).__name__}: processing runs into {self.cache_dir.name}")
            for i, (stamp, summary) in zip(todo, built, strict=True):
                memo.put(stamp, VERIFIED)
                found[i] = summary
        memo.save()
        self._moments = [found[i][0] for i in range(len(self))]
        self.sample_sizes = [found[i][1] for i in range(len(self))]

    def read_cache(self, index: int) -> dict[str, Tensor]:
        """The memory-mapped fields of sample ``index`` (checked against the options and raw
        content; its bytes were verified at construction)."""
        path = self.cache_path(index)
        fields, why = load_cache(path, self.cache_meta(index), verify=False)
        if fields is None:
            raise DataFormatError(
                f"{path}: the cache of {self.sample_name(index)} is {why}, though it was checked when this "
                "dataset was made (replaced or removed since); start again to rebuild it"
            )
        return fields

    # --- samples -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Data:
        fields = self.read_cache(index)
        data = Data(pos=fields["pos"], y=fields["y"])
        for key in ("x", *EXTRA_FIELDS):
            if key in fields:
                data[key] = fields[key]
        data.sample_id = torch.tensor([index])
        return data if self.transform is None else self.transform(data)

    def sample_keys(self) -> list[Hashable]:
        """One identity per sample: its raw file's content (used to refuse overlapping splits)."""
        return [self.raw_digests[f] for f in self.files]

    def sample_moments(self, index: int) -> tuple[Tensor, Tensor]:
        """``channel_moments`` of sample ``index``'s inputs and targets, kept from its cache."""
        return self._moments[index]


def _summary(fields: dict[str, Tensor]) -> tuple[tuple[Tensor, Tensor], int]:
    """(input and target moments, number of points) of a cached run, copied out of its map."""
    return (fields["input_moments"].clone(), fields["target_moments"].clone()), int(fields["pos"].shape[0])


def build_run_cache(dataset: RunFilesDataset, index: int) -> tuple[tuple, tuple[tuple[Tensor, Tensor], int]]:
    """Read, check and cache sample ``index`` of ``dataset``; returns the cache file's stamp
    (after verifying what was written) and its ``_summary``. Module-level: process pools call it."""
    fields = checked_sample(dataset.read_file(index), dataset.sample_name(index))
    inputs, targets = sample_moments(fields)
    n = fields["pos"].shape[0]
    path, meta = dataset.cache_path(index), dataset.cache_meta(index)
    write_cache(path, {**fields, "ptr": torch.tensor([0, n]), "input_moments": inputs, "target_moments": targets}, meta)
    stored, why = load_cache(path, meta)
    if stored is None:
        raise RuntimeError(f"{path}: the cache just written does not verify ({why})")
    return file_stamp(path), _summary(stored)
