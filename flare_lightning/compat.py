"""Every private Lightning (and torch) API this project relies on, in one place.

A private call goes through a function here; a private hook that a project class overrides
is declared in ``OVERRIDDEN`` and checked by ``check_private_api`` when the CLI starts, so a
Lightning release that moves one fails at once, naming it, instead of silently breaking
resume or history. ``tests/test_compat.py`` exercises each entry; ``pyproject.toml`` bounds
lightning to ``TESTED_LIGHTNING``, the range those tests passed on.
"""

from __future__ import annotations

import importlib
import inspect
from importlib import metadata
from typing import Any

import lightning as L
from packaging.version import Version
from torch import nn

# [lower, upper): lightning versions the tests ran on (keep equal to pyproject.toml's bound).
TESTED_LIGHTNING = ("2.6.6", "2.7")

# (module, class, private method, its parameters): hooks that project classes override.
OVERRIDDEN = (
    # cli.FlareCLI: Lightning's version loads --ckpt_path before the project's checks
    ("lightning.pytorch.cli", "LightningCLI", "_parse_ckpt_path", ("self",)),
    # cli.FlareCLI: drops the checkpoint callback under --trainer.enable_checkpointing false
    ("lightning.pytorch.cli", "LightningCLI", "_instantiate_trainer", ("self", "config", "callbacks")),
    # callbacks.checkpoint.BestAndLastCheckpoint: notes the step whose last.ckpt was written
    ("lightning.pytorch.callbacks", "ModelCheckpoint", "_save_last_checkpoint", ("self", "trainer", "monitor_candidates")),
)


def lightning_version() -> str:
    return metadata.version("lightning")


def untested_lightning() -> str | None:
    """A warning when the installed lightning is outside ``TESTED_LIGHTNING``, else None."""
    low, high = TESTED_LIGHTNING
    version = lightning_version()
    if Version(low) <= Version(version) < Version(high):
        return None
    return (f"lightning {version} is outside the range flare-lightning was tested with (>={low},<{high}); "
            f"resume, run folders and metrics history rely on its private APIs (flare_lightning/compat.py)")


def check_private_api() -> None:
    """Raise a ``RuntimeError`` naming the first overridden private hook that the installed
    lightning no longer has with the expected parameters."""
    for module, cls_name, name, params in OVERRIDDEN:
        cls = getattr(importlib.import_module(module), cls_name)
        method = getattr(cls, name, None)
        found = tuple(inspect.signature(method).parameters) if callable(method) else None
        if found != params:
            low, high = TESTED_LIGHTNING
            raise RuntimeError(
                f"lightning {lightning_version()}: {module}.{cls_name}.{name} has parameters {found}, flare-lightning "
                f"overrides it expecting {params}; install lightning>={low},<{high}"
            )


# --- ModelCheckpoint internals (callbacks/checkpoint.py) ----------------------------
def monitor_candidates(callback: L.Callback, trainer: L.Trainer) -> dict[str, Any]:
    """The metrics a ``ModelCheckpoint`` would save with (its ``_monitor_candidates``)."""
    return callback._monitor_candidates(trainer)


def skips_saving(callback: L.Callback, trainer: L.Trainer) -> bool:
    """Whether a ``ModelCheckpoint`` saves nothing now (debug run, sanity check, already saved)."""
    return callback._should_skip_saving_checkpoint(trainer)


def saves_on_train_epoch_end(callback: L.Callback, trainer: L.Trainer) -> bool:
    """Whether a ``ModelCheckpoint`` saves at the end of training epochs (not after validation)."""
    return callback._should_save_on_train_epoch_end(trainer)


# --- loops ----------------------------------------------------------------------------
def batches_processed(trainer: L.Trainer) -> int:
    """Training batches of the current epoch that the trainer has processed (optimizer
    step done): what Lightning replays a mid-epoch resume from."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


# --- hyperparameters ------------------------------------------------------------------
def built_by_cli() -> bool:
    """True while LightningCLI instantiates a module with its config as hyperparameters
    (``save_hyperparameters`` then records the config, not the built objects)."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:
        return False
    return _given_hyperparameters.get() is not None


# --- torch ----------------------------------------------------------------------------
def drop_compiled_call(module: nn.Module) -> None:
    """Undo ``nn.Module.compile()`` on ``module`` itself (its calls run eagerly again)."""
    module._compiled_call_impl = None


# --- warnings of the tested versions that a user cannot act on ------------------------------
UPSTREAM_NOISE = (
    # lightning 2.6's own pytree helper builds torch's deprecated LeafSpec (torch >= 2.10), on every
    # evaluation loop; nothing in this project or a user's config uses it
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)


def quiet_upstream_noise() -> None:
    """Ignore ``UPSTREAM_NOISE`` (the `flare` command calls this; a library user keeps every warning)."""
    import warnings

    for category, message in UPSTREAM_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
