"""Checkpoint files: written beside their destination and renamed (never half-written),
read weights-only (a checkpoint never runs code) and checked before use: a Lightning
checkpoint of finite weights and usable normalisation statistics, or an error naming the
file and what is wrong."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from flare_lightning.atomic import atomic_write

LIGHTNING_KEYS = ("state_dict", "pytorch-lightning_version", "epoch", "global_step")
# The only instantiator Lightning may call when it rebuilds a module from a checkpoint's hparams.
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, not a Lightning checkpoint, or unusable."""


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
    """``torch.load(path, weights_only=True)``, checked by ``check_checkpoint``: errors name the
    file and say what was expected (a missing, empty or truncated file, one that needs full
    unpickling, which could run arbitrary code and is refused, or one that is not a usable
    Lightning checkpoint).

    Args:
        path: the ``.ckpt`` file.
        map_location: as in ``torch.load``.
        mmap: map the file instead of reading it (cheap when only a few entries are used).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (expected a .ckpt file written by flare fit)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (a save was interrupted?); use another checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise unsafe_checkpoint_error(path, err) from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint {path} is damaged or not a torch checkpoint ({err})") from err
    check_checkpoint(ckpt, path)
    return ckpt


def check_checkpoint(ckpt: Any, path: str | Path) -> None:
    """Refuse what would fail later or silently give wrong numbers: not a Lightning
    checkpoint (e.g. a plain state dict), non-finite weights, normalisation statistics that
    divide by zero, or a foreign instantiator in the hyperparameters."""
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in LIGHTNING_KEYS):
        have = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint written by flare fit: expected the keys "
            f"{list(LIGHTNING_KEYS)}, found {have} (a plain state dict loads with torch.load and "
            "module.load_state_dict)"
        )
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: 'state_dict' must map parameter names to tensors")
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"checkpoint {path}: weight {name!r} holds NaN or Inf values (the run diverged?); "
                "use an earlier checkpoint"
            )
        if name.endswith("_norm.std") and bool(state.get(name.replace(".std", ".fitted"), torch.tensor(False))):
            if not bool((value > 0).all()):
                raise CheckpointError(
                    f"checkpoint {path}: normalisation statistics {name!r} hold a zero or negative standard "
                    f"deviation ({value.tolist()}): normalising by it divides by zero"
                )
    instantiator = (ckpt.get("hyper_parameters") or {}).get("_instantiator")
    if instantiator not in (None, INSTANTIATOR):
        raise CheckpointError(f"checkpoint {path}: hyperparameter _instantiator {instantiator!r} is not {INSTANTIATOR!r}")


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes local checkpoints to a temporary file in the
    destination folder and renames it (Lightning's ``_atomic_save`` writes through
    fsspec's temporary file in the system temp folder, which is a copy, not a rename,
    when that is another filesystem), and loads them weights-only and checked."""

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
