"""``flare predict`` on new meshes: list the files a glob or folder names, read them one at
a time (memory does not grow with their number) and batch them with their geometry."""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from datamodules.checks import DataFormatError
from datamodules.collate import dense_batch
from flare_lightning.io.mesh_geometry import MeshGeometry, check_output_name

SUFFIXES = (".npz", ".vtp", ".vtu")
EXTRA_FIELDS = ("normals", "areas")  # per-point geometry kept for integrated quantities


def resolve_predict_files(spec: str | Sequence[str]) -> list[Path]:
    """Sorted mesh files named by ``spec``: a folder (its ``.npz``/``.vtp``/``.vtu`` files,
    recursively), a glob pattern, a file, or a list of these."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    files: list[Path] = []
    for item in specs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise FileNotFoundError(
                f"data.predict_files={item!r}: no mesh files found (expected a folder, glob or file of "
                f"{'/'.join(SUFFIXES)} files)"
            )
        files += found
    return list(dict.fromkeys(files))


class PredictFileDataset(Dataset):
    """One sample per file, read on access by ``reader(path) -> dict`` (``pos`` [N, d], optional
    ``x`` [N, f], ``y`` [N, o], ``normals`` [N, 3], ``areas`` [N, 1], and ``geometry``, a
    ``MeshGeometry`` naming the output). Output names must be unique: they name the files.

    Args:
        files: mesh files.
        reader: picklable callable reading one file (data loader workers call it).
    """

    def __init__(self, files: Sequence[Path], reader: Callable[[Path], dict[str, Any]]) -> None:
        self.files, self.reader = list(files), reader

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: int) -> tuple[Data, MeshGeometry]:
        path = self.files[idx]
        sample = self.reader(path)
        data = Data(pos=torch.as_tensor(sample["pos"], dtype=torch.float32))
        for key in ("x", "y", *EXTRA_FIELDS):
            if sample.get(key) is not None:
                data[key] = torch.as_tensor(sample[key], dtype=torch.float32)
        data.sample_id = torch.tensor([idx])
        return data, sample["geometry"]


class PredictCollate:
    """Like ``PaddedCollate``, for files that may lack targets: ``x``, ``pos``, ``mask``,
    ``padded``, ``sample_id``, ``meshes`` (the samples' ``MeshGeometry``), ``normals``/``areas``
    [B, N_max, ·] when every sample of the batch has them, and ``y`` [B, N_max, o] with
    ``has_target`` [B] bool when some have targets (zeros for those without)."""

    def __call__(self, items: list[tuple[Data, MeshGeometry]]) -> dict[str, Any]:
        meshes = [geometry for _, geometry in items]
        keys = [k for k in EXTRA_FIELDS if all(k in d for d, _ in items)]
        common = ["pos", "sample_id", *(["x"] if all("x" in d for d, _ in items) else []), *keys]
        plain = [Data(**{k: d[k] for k in common}) for d, _ in items]
        has_target = torch.tensor(["y" in d for d, _ in items])
        if has_target.any():  # files without targets get zeros, flagged by has_target
            width = next(d.y.shape[1] for d, _ in items if "y" in d)
            for p, (d, _) in zip(plain, items):
                p.y = d.y if "y" in d else torch.zeros(d.num_nodes, width)
            keys.append("y")
        out = dense_batch(plain, ["pos", *keys])
        out["meshes"] = meshes
        if has_target.any():
            out["has_target"] = has_target
        return out


def check_unique_names(dataset: PredictFileDataset) -> None:
    """Refuse an input whose output name is not a plain file name, and two inputs that would
    write the same output file, also on case-insensitive filesystems (names come from the
    reader's ``output_name(path)``, without reading the files)."""
    seen: dict[str, Path] = {}
    for path in dataset.files:
        try:
            name = check_output_name(dataset.reader.output_name(path), path).casefold()
        except ValueError as err:
            raise DataFormatError(f"data.predict_files: {err}") from err
        if name in seen:
            raise DataFormatError(
                f"data.predict_files: {seen[name]} and {path} would both be written as {name!r}; "
                "rename one or predict them separately"
            )
        seen[name] = path
