"""Load a finished run for notebooks and scripts: the trained module from one of its
checkpoints and the datamodule from the ``config.yaml`` the CLI saved beside it. Both only
build this project's classes (or classes the caller passes): a run folder is data, and a
crafted one must not run code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import yaml
from torch import nn

from flare_lightning.runs.checkpoint_config import trusted_hparams_classes
from flare_lightning.runs.checkpoint_io import load_checkpoint
from flare_lightning.training.module import SurrogateModule
from flare_lightning.runs.discovery import BEST
from flare_lightning.runs.trusted_classes import class_name, trusted_class


def load_module(run_dir: str | Path, checkpoint: str = BEST, map_location: str = "cpu",
                allowed: Sequence[type[nn.Module]] = ()) -> SurrogateModule:
    """``<run_dir>/checkpoints/<checkpoint>`` as a ``SurrogateModule`` in eval mode: the file is
    checked and loaded weights-only (a checkpoint never runs code), and its model must be one
    of this project's or of ``allowed``."""
    path = Path(run_dir) / "checkpoints" / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path} (expected a run folder made by flare fit)")
    return module_from_checkpoint(path, map_location, allowed)


def module_from_checkpoint(path: str | Path, map_location: str = "cpu",
                           allowed: Sequence[type[nn.Module]] = ()) -> SurrogateModule:
    """The ``SurrogateModule`` of checkpoint ``path`` in eval mode, after the project's checks
    (``checkpoint_io.load_checkpoint``) and only with trusted classes."""
    ckpt = load_checkpoint(path, mmap=True)
    trusted_hparams_classes(ckpt, Path(path), [class_name(c) for c in allowed])
    return SurrogateModule.load_from_checkpoint(path, map_location=map_location, weights_only=True).eval()


def load_datamodule(run_dir: str | Path, allowed: Sequence[type[L.LightningDataModule]] = (),
                    **overrides) -> L.LightningDataModule:
    """The run's datamodule, rebuilt from the ``data`` section of ``<run_dir>/config.yaml``
    with ``overrides`` applied to its ``init_args`` (relative paths in the config are
    relative to the folder the run was started from). Its class must be one of this
    project's datamodules or of ``allowed`` (your own, passed explicitly); anything else is
    refused before its module is imported."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: the run folder should hold the config.yaml the CLI saved")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a readable YAML file ({str(err).splitlines()[0]})") from err
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{path}: key 'data' must hold a class_path and init_args")
    init_args = data.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise ValueError(f"{path}: data.init_args must be a mapping of options, got {type(init_args).__name__}")
    cls = trusted_class(data["class_path"], L.LightningDataModule, f"{path}: data", allowed)
    return cls(**{**init_args, **overrides})
