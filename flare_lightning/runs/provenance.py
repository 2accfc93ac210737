"""What a run's numbers come from: the code (commit, package versions), the data (source
and split sizes) and the checkpoint (path, epoch, step), as JSON-ready dicts."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from flare_lightning.runs.checkpoint_io import load_checkpoint

PACKAGES = ("torch", "lightning", "torch_geometric", "torchmetrics")
SPLITS = ("train", "val", "test", "predict")


def commit() -> str:
    """``$FLARE_COMMIT`` when set (a copy whose ``.git`` is not its own, as on the device
    machines), else the git commit of the code (``-dirty`` with uncommitted changes), else
    ``"unknown"`` (an installed copy outside a repository)."""
    if os.environ.get("FLARE_COMMIT"):
        return os.environ["FLARE_COMMIT"]
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=10
            )
            return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def versions() -> dict[str, str | None]:
    """Versions of python and the packages that decide the numbers (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict[str, Any]:
    """``{"commit": ..., "versions": {...}, "float32_matmul_precision": ...}`` (TF32 or not)."""
    return {"commit": commit(), "versions": versions(), "float32_matmul_precision": torch.get_float32_matmul_precision()}


def data_info(datamodule: Any) -> dict[str, Any] | None:
    """Class, root, source (``files``, ``generated`` or ``proxy``) and split sizes of a
    datamodule: the sizes of the splits it has built, else its ``n_<split>`` options."""
    if datamodule is None:
        return None
    built = getattr(datamodule, "datasets", None) or {}
    sizes: dict[str, int | None] = {}
    for split in SPLITS:
        if split in built:
            sizes[split] = len(built[split])
        elif isinstance(getattr(datamodule, f"n_{split}", None), int):
            sizes[split] = getattr(datamodule, f"n_{split}")
    root = getattr(datamodule, "root", None)
    return {
        "class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
        "root": str(root) if root is not None else None,
        "source": getattr(datamodule, "data_source", "unknown"),
        "split_sizes": sizes,
    }


def checkpoint_info(path: str | Path | None) -> dict[str, Any]:
    """Path, epoch and global step of a checkpoint (read weights-only and memory-mapped, so
    a large checkpoint costs little); ``path: None`` for weights held in memory."""
    if path is None:
        return {"path": None, "epoch": None, "global_step": None}
    ckpt = load_checkpoint(path, map_location="cpu", mmap=True)
    return {"path": str(Path(path).resolve()), "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}
