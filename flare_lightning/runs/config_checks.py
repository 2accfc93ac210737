"""The values of a command's config, checked once on the parsed config before anything is
built: a value that would crash deep in Lightning or torch (``ZeroDivisionError``,
``OverflowError``), or silently train nothing, is refused with its option and what was
expected. Where a value has an obvious meaning it is normalised instead (``~`` in a data root)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value makes no sense; the message names the option."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(command: str, config: Any) -> None:
    """Raise a ``ConfigError`` listing every bad value of ``config`` (the parsed options of
    ``command``); normalise ``data.init_args.root`` in place."""
    errors: list[str] = []

    def require(ok: bool, key: str, value: Any, expected: str) -> None:
        if not ok:
            errors.append(f"{key}={value!r}: expected {expected}")

    model, trainer = config.get("model") or {}, config.get("trainer") or {}
    if model.get("optimizer") is None:  # AdamW's own options (a given optimizer has its own)
        lr, wd, eps, betas = (model.get(k) for k in ("lr", "weight_decay", "eps", "betas"))
        require(_number(lr) and lr > 0, "model.lr", lr, "a learning rate > 0")
        require(_number(wd) and wd >= 0, "model.weight_decay", wd, "a weight decay >= 0")
        require(_number(eps) and eps > 0, "model.eps", eps, "an epsilon > 0")
        require(isinstance(betas, (list, tuple)) and len(betas) == 2 and all(_number(b) and 0 <= b < 1 for b in betas),
                "model.betas", betas, "two numbers in [0, 1)")
    onecycle = model.get("scheduler") == "onecycle" and model.get("lr_scheduler") is None
    if onecycle:
        pct = model.get("pct_start")
        require(_number(pct) and 0 < pct < 1, "model.pct_start", pct, "a fraction in (0, 1)")
        for key in ("div_factor", "final_div_factor"):
            require(_number(model.get(key)) and model.get(key) > 0, f"model.{key}", model.get(key), "a number > 0")
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    require(epochs is None or (_int(epochs) and (epochs >= 1 or epochs == -1)), "trainer.max_epochs", epochs,
            "a number of epochs >= 1 (or -1: no epoch limit)")
    require(steps is None or (_int(steps) and (steps >= 1 or steps == -1)), "trainer.max_steps", steps,
            "a number of steps >= 1 (or -1: no step limit)")
    if command == "fit" and onecycle and epochs == -1 and steps in (None, -1):
        errors.append("trainer.max_epochs=-1 with trainer.max_steps=-1: the OneCycle schedule (model.scheduler) needs "
                      "a finite number of steps; set one of them")
    clip = trainer.get("gradient_clip_val")
    require(clip is None or (_number(clip) and clip >= 0), "trainer.gradient_clip_val", clip,
            "a clipping threshold >= 0 (0 or null: no clipping)")
    accumulate = trainer.get("accumulate_grad_batches")
    require(accumulate is None or (_int(accumulate) and accumulate >= 1), "trainer.accumulate_grad_batches",
            accumulate, "a number of batches >= 1")
    every = trainer.get("check_val_every_n_epoch")
    require(every is None or (_int(every) and every >= 1), "trainer.check_val_every_n_epoch", every,
            "a number of epochs >= 1 (or null)")
    interval = trainer.get("val_check_interval")
    require(interval is None or (_number(interval) and interval > 0), "trainer.val_check_interval", interval,
            "a fraction of an epoch in (0, 1] or a number of batches >= 1")
    used = {"fit": "train", "validate": "val", "test": "test", "predict": "predict"}[command]
    for split in ("train", "val", "test", "predict"):
        key = f"limit_{split}_batches"
        value = trainer.get(key)
        fraction_or_count = _number(value) and value >= 0 and (float(value).is_integer() or value <= 1)
        require(value is None or fraction_or_count, f"trainer.{key}", value, "a fraction in [0, 1] or a number of batches")
        if split == used and value is not None and fraction_or_count and value == 0:
            errors.append(f"trainer.{key}=0: flare {command} would run no {split} batch at all")
    _check_root(config.get("data"), errors)
    if errors:
        raise ConfigError(f"flare {command}: bad config value(s): " + "; ".join(errors))


def _check_root(data: Any, errors: list[str]) -> None:
    args = data.get("init_args") if data is not None and hasattr(data, "get") else None
    if args is None or "root" not in args:
        return
    root = args.get("root")
    if not isinstance(root, (str, os.PathLike)) or not str(root).strip():
        errors.append(f"data.init_args.root={root!r}: expected the data folder (an empty root would put data "
                      "into the current folder)")
        return
    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        errors.append(f"data.init_args.root={str(root)!r}: is a file, expected a folder")
        return
    args["root"] = str(path)


def check_config_files(paths: list[str]) -> str | None:
    """The problem with the first ``--config`` file that exists but is not a YAML mapping of
    options (jsonargparse's message does not name the file), else None."""
    for path in paths:
        if not Path(path).is_file():
            continue  # jsonargparse names a missing file, and reads non-files as YAML text
        try:
            content = yaml.safe_load(Path(path).read_bytes())
        except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
            return f"--config {path}: not a readable YAML file ({str(err).splitlines()[0]})"
        if content is not None and not isinstance(content, dict):  # an empty file sets nothing
            return f"--config {path}: expected a YAML mapping of options (trainer:, model:, data: ...), got {type(content).__name__}"
    return None
