"""What a checkpoint fixes, checked against the command that uses it.

A fit that resumes a checkpoint continues that run: the restored weights, optimizer,
schedule, data position and normalisation statistics silently override a changed model,
optimizer, learning rate, dataset or batch size, so such changes are refused, naming each
option. An evaluation builds the checkpoint's model (explicit ``--model...`` options win,
and are reported) on data of the dataset it was trained on.

The reference is the config the checkpoint carries (``flare_config``, saved with every
checkpoint of a fit), else the run's ``config.yaml``, else the model's hyperparameters.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from flare_lightning.runs.checkpoint_io import CheckpointError
from flare_lightning.runs.records import CHECKPOINT_CONFIG, CONFIG

# Options a resumed fit may change: how it runs, logs, saves and reports, not what it trains.
MAY_CHANGE = (
    "test_after_fit", "float32_matmul_precision",
    "trainer.logger", "trainer.default_root_dir", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.log_every_n_steps", "trainer.num_sanity_val_steps", "trainer.profiler", "trainer.max_epochs",
    "trainer.max_steps", "trainer.max_time", "trainer.check_val_every_n_epoch", "trainer.val_check_interval",
    "trainer.accelerator", "trainer.deterministic", "trainer.benchmark", "trainer.enable_checkpointing",
    "checkpoint", "test_metrics", "epoch_summary", "prediction_writer", "finite_loss",
    "data.init_args.num_workers", "data.init_args.eval_batch_size", "data.init_args.predict_files",
    "model.fast_step", "model.eval_fp32",
    "model.model.init_args.eval_chunk_size", "model.model.init_args.compile", "model.model.init_args.mixer_backend",
    "model.model.init_args.checkpoint_blocks", "model.model.init_args.mlp_chunk_size",
)
NOT_COMPARED = ("ckpt_path",)  # how this resume was asked for, not what it trains
CALLBACKS = "trainer.callbacks"  # compared apart: only callbacks with saved state must stay
# Classes a checkpoint's hyperparameters may name, per option (module prefixes).
TRUSTED_HPARAM_CLASSES = {"model": ("flare_lightning.",), "optimizer": ("torch.optim.",),
                          "lr_scheduler": ("torch.optim.lr_scheduler.",)}
# Module hyperparameters that are not options (link targets, Lightning's bookkeeping).
NOT_OPTIONS = ("in_dim", "out_dim", "_instantiator")


class ResumeChangeError(ValueError):
    """A resumed fit changes what its checkpoint fixes."""


def reference_config(ckpt: Mapping[str, Any], run: Path | None) -> tuple[dict[str, Any], str]:
    """(the config the checkpoint was trained with, where it came from): its ``flare_config``,
    else ``<run>/config.yaml``, else its model hyperparameters under ``model``."""
    if isinstance(ckpt.get(CHECKPOINT_CONFIG), dict):
        return ckpt[CHECKPOINT_CONFIG], "the checkpoint's config"
    path = None if run is None else run / CONFIG
    if path is not None and path.is_file():
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            config = None
        if isinstance(config, dict):
            return config, str(path)
    hparams = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if k not in NOT_OPTIONS}
    return {"model": hparams}, "the checkpoint's hyperparameters"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are values."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def same_value(a: Any, b: Any) -> bool:
    """Equal, as numbers, or as paths (``data/x`` and ``./data/x``)."""
    if a == b:
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str) and a and b:
        return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
    return False


def may_change(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE)


def differences(a: Any, b: Any, prefix: str = "") -> dict[str, list[Any]]:
    """Option -> [a's, b's] where two configs differ: compared key by key where both hold a
    mapping (options only one of them has, from another code version, are skipped), as whole
    values elsewhere (``null`` against a class is one difference)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: dict[str, list[Any]] = {}
        for key in sorted(a.keys() & b.keys(), key=str):
            out.update(differences(a[key], b[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {} if same_value(a, b) else {prefix: [a, b]}


def resume_changes(before: Mapping[str, Any], now: Mapping[str, Any], stateful: Iterable[str]) -> tuple[dict, dict]:
    """(refused, allowed): option -> [before, now] for the options that differ between the
    checkpoint's config and this fit's, split by ``MAY_CHANGE``. ``trainer.callbacks``
    differ when a callback whose class saved state (``stateful``: class names) was dropped,
    added or reconfigured."""
    refused, allowed = {}, {}
    for key, change in differences(before, now).items():
        if key in NOT_COMPARED or key == CALLBACKS or key.startswith(CALLBACKS + "."):
            continue
        (allowed if may_change(key) else refused)[key] = change
    trainer_before, trainer_now = before.get("trainer") or {}, now.get("trainer") or {}
    if "callbacks" in trainer_before and "callbacks" in trainer_now:
        kept_before = _stateful_callbacks(trainer_before["callbacks"], stateful)
        kept_now = _stateful_callbacks(trainer_now["callbacks"], stateful)
        if kept_before != kept_now:
            refused[CALLBACKS] = [kept_before, kept_now]
    return refused, allowed


def _stateful_callbacks(callbacks: Any, stateful: Iterable[str]) -> list[Any]:
    names = set(stateful)
    return [cb for cb in callbacks or [] if isinstance(cb, Mapping) and str(cb.get("class_path", "")).rpartition(".")[2] in names]


def stateful_callback_names(ckpt: Mapping[str, Any]) -> set[str]:
    """Class names of the callbacks whose state the checkpoint holds (``EMA``, ...)."""
    return {str(key).split("{")[0] for key in (ckpt.get("callbacks") or {})}


def refuse_resume_changes(refused: Mapping[str, list], ckpt_path: Path, source: str) -> None:
    if not refused:
        return
    lines = "; ".join(f"{key}: {a!r} -> {b!r}" for key, (a, b) in refused.items())
    raise ResumeChangeError(
        f"fit --ckpt_path {ckpt_path} resumes a run, and its checkpoint fixes options this command changes "
        f"({source} vs this config): {lines}. The restored weights, optimizer, schedule, data position and "
        "normalisation would override them silently. Drop these options to continue the run as it was "
        f"(its config: {ckpt_path.parent.parent / CONFIG}), or start a new run without --ckpt_path. A resume "
        f"may change: {', '.join(MAY_CHANGE)}"
    )


def explicit_model_options(args: Iterable[str]) -> set[str]:
    """The ``model...`` options given on the command line (``--model.lr 0.1``,
    ``--model.model.init_args.channels=16``), as dotted keys without ``init_args``."""
    return {strip_init_args(arg[2:].split("=", 1)[0]) for arg in args if arg.startswith(("--model.", "--model="))}


def strip_init_args(key: str) -> str:
    """``model.model.init_args.channels`` -> ``model.model.channels`` (how options may be typed)."""
    return ".".join(part for part in key.split(".") if part != "init_args")


def model_differences(config_model: Mapping[str, Any], ckpt_model: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Option -> [this config's, the checkpoint's] for the model options that differ."""
    return differences(config_model, {k: v for k, v in ckpt_model.items() if k not in NOT_OPTIONS})


def trusted_hparams_classes(ckpt: Mapping[str, Any], path: Path, allowed: Iterable[str] = ()) -> None:
    """Refuse a checkpoint whose hyperparameters name classes to build (``class_path``) other
    than this project's models, torch's optimizers and schedulers, or the ``allowed`` class
    paths (those the command's config names): rebuilding the module would import and run them."""
    allowed = set(allowed)
    for key, value in flatten(ckpt.get("hyper_parameters") or {}).items():
        if not key.endswith("class_path"):
            continue
        prefixes = TRUSTED_HPARAM_CLASSES.get(key.split(".")[0], ())
        if not (isinstance(value, str) and (value.startswith(prefixes) or value in allowed)):
            raise CheckpointError(
                f"checkpoint {path}: hyperparameter {key}={value!r} is not rebuilt: expected a class under "
                f"{', '.join(prefixes) or 'nothing'}" + (f" or one of {sorted(allowed)}" if allowed else "")
            )


def class_paths(tree: Any) -> set[str]:
    """Every ``class_path`` value in a config tree."""
    return {v for k, v in flatten(tree).items() if k.endswith("class_path") and isinstance(v, str)}


def data_class_of(ckpt: Mapping[str, Any]) -> str | None:
    """The datamodule class the checkpoint was trained on, when it carries its config."""
    config = ckpt.get(CHECKPOINT_CONFIG)
    data = config.get("data") if isinstance(config, Mapping) else None
    return data.get("class_path") if isinstance(data, Mapping) else None
