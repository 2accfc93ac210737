"""Load a finished run for notebooks and scripts: the trained module from one of its
checkpoints and the datamodule from the ``config.yaml`` the CLI saved beside it."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import lightning as L
import yaml

from flare_lightning.checkpoint_io import unsafe_checkpoint_error
from flare_lightning.module import SurrogateModule
from flare_lightning.runs import BEST


def load_module(run_dir: str | Path, checkpoint: str = BEST, map_location: str = "cpu") -> SurrogateModule:
    """``<run_dir>/checkpoints/<checkpoint>`` as a ``SurrogateModule`` in eval mode (loaded
    weights-only: a checkpoint never runs code)."""
    path = Path(run_dir) / "checkpoints" / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path} (expected a run folder made by flare fit)")
    try:
        module = SurrogateModule.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise unsafe_checkpoint_error(path, err) from err
    return module.eval()


def load_datamodule(run_dir: str | Path, **overrides) -> L.LightningDataModule:
    """The run's datamodule, rebuilt from the ``data`` section of ``<run_dir>/config.yaml``
    with ``overrides`` applied to its ``init_args`` (relative paths in the config are
    relative to the folder the run was started from)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: the run folder should hold the config.yaml the CLI saved")
    data = yaml.safe_load(path.read_text()).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{path}: key 'data' must hold a class_path and init_args")
    module_name, _, class_name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**{**(data.get("init_args") or {}), **overrides})
