"""Checkpoint files: written beside their destination and renamed (never half-written),
read weights-only (a checkpoint never runs code)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from flare_lightning.atomic import atomic_write


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds pickled objects that weights-only loading refuses."""


def unsafe_checkpoint_error(path: str | Path, err: Exception) -> UnsafeCheckpointError:
    """The error for a checkpoint that needs full unpickling, naming the file."""
    return UnsafeCheckpointError(
        f"checkpoint {path} holds objects that weights-only loading refuses ({str(err).splitlines()[0]}). "
        "flare loads checkpoints with weights_only=True because unpickling arbitrary objects can run code. "
        "If you trust the file, load it with torch.load(..., weights_only=False) yourself and save its "
        "tensors, numbers and strings again (a Lightning checkpoint made by flare fit holds only those)."
    )


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say what
    was expected: a missing, empty or truncated file, or one that needs full unpickling
    (which could run arbitrary code, so it is refused).

    Args:
        path: the ``.ckpt`` file.
        map_location: as in ``torch.load``.
        mmap: map the file instead of reading it (cheap when only a few entries are used).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (expected a .ckpt file written by flare fit)")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (a save was interrupted?); use another checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise unsafe_checkpoint_error(path, err) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"checkpoint {path} is damaged or not a torch checkpoint ({err})") from err


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local checkpoints to a temporary file in the
    destination folder and renames it (Lightning's ``_atomic_save`` writes through
    fsspec's temporary file in the system temp folder, which is a copy, not a rename,
    when that is another filesystem), and loads them weights-only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        if map_location is None:
            map_location = lambda storage, loc: storage  # noqa: E731  (Lightning's default: keep devices)
        return load_checkpoint(path, map_location=map_location)
