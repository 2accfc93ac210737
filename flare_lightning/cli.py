"""The ``flare`` command: LightningCLI with fit / validate / test / predict."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from flare_lightning import compat
from flare_lightning.callbacks.checkpoint import BestAndLastCheckpoint
from flare_lightning.callbacks.epoch_summary import EpochSummary
from flare_lightning.callbacks.finite_loss import FiniteLossCheck
from flare_lightning.callbacks.prediction_writer import PredictionWriter
from flare_lightning.callbacks.test_metrics import TestMetricsWriter
from flare_lightning.runs.checkpoint_config import (
    class_paths,
    data_class_of,
    explicit_model_options,
    model_differences,
    reference_config,
    refuse_resume_changes,
    resume_changes,
    stateful_callback_names,
    strip_init_args,
    trusted_hparams_classes,
)
from flare_lightning.runs.checkpoint_io import CheckpointError, SafeCheckpointIO, load_checkpoint
from flare_lightning.runs.config_checks import check_config, check_config_files
from flare_lightning.training.module import SurrogateModule
from flare_lightning.runs.csv_logger import RunCSVLogger
from flare_lightning.runs.folder import RunFolder, csv_logger_config, name_loggers_like_csv, plan_run_folder
from flare_lightning.runs.records import RunRecords
from flare_lightning.runs.discovery import BEST, run_of_checkpoint
from flare_lightning.runs.trusted_classes import related_classes
from flare_lightning.runs.validation import has_validation


class FlareCLI(LightningCLI):
    """Links data dimensions into the model, checks the config's values once, decides the
    command's run folder once (``flare_lightning.runs.folder``), checks the checkpoint a
    command reads against the command (``flare_lightning.runs.checkpoint_config``), keeps
    best/last checkpoints and records test metrics."""

    run_folder: RunFolder | None = None
    checkpoint: dict[str, Any] | None = None  # the checkpoint the command restores, checked
    given_args: list[str] = []
    resume_changes: dict[str, list[Any]] | None = None  # options a resumed fit changed (allowed ones)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        finally:  # however the command ends, its run folder is unlocked
            if self.run_folder is not None:
                self.run_folder.release()

    def add_arguments_to_parser(self, parser) -> None:
        # Input/output sizes come from the data, never typed twice.
        parser.link_arguments("data.in_dim", "model.in_dim", apply_on="instantiate")
        parser.link_arguments("data.out_dim", "model.out_dim", apply_on="instantiate")
        parser.link_arguments("data.in_dim", "model.model.init_args.in_dim", apply_on="instantiate")
        parser.link_arguments("data.out_dim", "model.model.init_args.out_dim", apply_on="instantiate")
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/rel_l2",
                "checkpoint.mode": "min",
                "checkpoint.filename": Path(BEST).stem,
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.enable_version_counter": False,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(TestMetricsWriter, "test_metrics")
        parser.add_lightning_class_args(EpochSummary, "epoch_summary")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(FiniteLossCheck, "finite_loss")
        parser.add_argument(
            "--float32_matmul_precision",
            type=Literal["highest", "high", "medium"],
            default="highest",
            help="torch.set_float32_matmul_precision for float32 matmuls: highest (true fp32, PyTorch's "
            "default), high (TF32 tensor cores, what the FLARE authors' trainer enables) or medium (bf16)",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="after fit, test the best checkpoint (last.ckpt without validation data) and write "
            "test_metrics.json into the run folder",
        )

    def parse_arguments(self, parser, args) -> None:
        given = [str(a) for a in (sys.argv[1:] if args is None else args)]
        self.given_args = given
        problem = check_config_files(config_file_args(given))
        if problem:
            parser.error(problem)
        try:
            super().parse_arguments(parser, args)
        except SystemExit as exit:
            if exit.code and not any(a.startswith(("--config", "-c")) for a in given):
                sub = next((a for a in given if not a.startswith("-")), "fit")
                print(f"hint: start from a dataset config: flare {sub} --config configs/<dataset>.yaml, "
                      f"e.g. flare {sub} --config configs/quickstart.yaml", file=sys.stderr)
            raise

    def _parse_ckpt_path(self) -> None:
        """Nothing here: Lightning would load ``--ckpt_path`` now, before the project's checks,
        and let the checkpoint's hyperparameters silently replace ``--model`` options;
        ``before_instantiate_classes`` reads and checks it instead (compat.OVERRIDDEN)."""

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        config = self.config.get(sub, self.config) if sub else self.config
        # Global and per process: every run (and every DDP process, which parses again) sets it.
        torch.set_float32_matmul_precision(config.get("float32_matmul_precision") or "highest")
        name_loggers_like_csv(config.get("trainer", {}).get("logger"))
        if sub is None:
            return
        check_config(sub, config)
        if sub != "fit" and not config.get("ckpt_path"):
            raise SystemExit(
                f"flare {sub}: no trained weights given: pass --ckpt_path best (the newest run's "
                "best checkpoint), last, or a .ckpt file"
            )
        self.run_folder = plan_run_folder(sub, config)
        path = self.run_folder.checkpoint
        if path is None:
            return
        self.checkpoint = load_checkpoint(path, mmap=True)
        trusted_hparams_classes(self.checkpoint, path, class_paths(config.model.as_dict()))
        if sub == "fit":
            self._check_resume(config, path)
        else:
            self._build_checkpoint_model(config, path)

    def _check_resume(self, config: Any, path: Path) -> None:
        """Refuse a resumed fit that changes what its checkpoint fixes; note what it may change."""
        before, source = reference_config(self.checkpoint, run_of_checkpoint(path))
        now = yaml.safe_load(self.parser.dump(self.config, skip_none=False))[self.subcommand]
        refused, allowed = resume_changes(before, now, stateful_callback_names(self.checkpoint))
        refuse_resume_changes(refused, path, source)
        self.resume_changes = allowed
        if allowed:
            rank_zero_info("resumed run: changed " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in allowed.items()))

    def _build_checkpoint_model(self, config: Any, path: Path) -> None:
        """Evaluate the checkpoint's own model: its hyperparameters replace the config's model
        options, except those given on the command line; the data must be of the dataset it
        was trained on."""
        trained_on, ours = data_class_of(self.checkpoint), config.get("data", {}).get("class_path")
        if trained_on is not None and ours is not None and not related_classes(trained_on, ours):
            raise CheckpointError(
                f"checkpoint {path} was trained on {trained_on}, but this config's data is {ours}: evaluate it "
                f"with the config of the data it was trained on (its run's config.yaml)"
            )
        hparams = {k: v for k, v in (self.checkpoint.get("hyper_parameters") or {}).items() if k != "_instantiator"}
        if not hparams:
            return
        ours_model = config.model.as_dict() if hasattr(config.model, "as_dict") else dict(config.model)
        differ = model_differences(ours_model, hparams)
        explicit = explicit_model_options(self.given_args)
        kept = {key: differ[key] for key in differ if strip_init_args(f"model.{key}") in explicit}
        updated = self.parser.parse_object({self.subcommand: {"model": hparams}}, self.config)
        for key in kept:
            updated[f"{self.subcommand}.model.{key}"] = self.config[f"{self.subcommand}.model.{key}"]
        self.config = updated
        taken = {k: v for k, v in differ.items() if k not in kept}
        if taken:
            rank_zero_info(f"the model is the checkpoint's ({path}): " + ", ".join(
                f"model.{k} {b!r} (config: {a!r})" for k, (a, b) in taken.items()))
        if kept:
            rank_zero_warn(f"model options given on the command line differ from checkpoint {path}'s and are used: "
                           + ", ".join(f"model.{k} {a!r} (checkpoint: {b!r})" for k, (a, b) in kept.items()))

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, writing into the command's run folder (its CSV logger, records and
        checkpoints), with checkpoints written beside their destination and read checked."""
        folder = self.run_folder
        if folder is not None:
            trainer_init = self.config_init[self.subcommand]["trainer"]
            csv_config = csv_logger_config(self.config[self.subcommand].trainer.get("logger"))
            loggers = trainer_init.get("logger")
            if csv_config is not None and folder.writes:
                args = csv_config.init_args
                resume = int(self.checkpoint["global_step"]) if folder.kind == "continue" and self.checkpoint else None
                run_csv = RunCSVLogger(folder, resume, prefix=args.get("prefix") or "",
                                       flush_logs_every_n_steps=args.get("flush_logs_every_n_steps") or 100)
                listed = loggers if isinstance(loggers, list) else [loggers]
                kwargs["logger"] = [run_csv if isinstance(lg, CSVLogger) else lg for lg in listed]
            if folder.slurm is not None:  # where Lightning saves a pre-emption checkpoint (hpc_ckpt_N.ckpt)
                kwargs["default_root_dir"] = str(folder.planned)
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        for records in (cb for cb in trainer.callbacks if isinstance(cb, RunRecords)):
            records.folder, records.changes = folder, self.resume_changes
        return trainer

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        # --trainer.enable_checkpointing false: drop our checkpoint callback, which Lightning
        # would otherwise reject (compat.OVERRIDDEN).
        if config.get("enable_checkpointing") is False:
            callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    def _restore_from(self) -> None:
        """Hand the resolved checkpoint to Lightning, saying why it was chosen."""
        sub = self.subcommand
        folder = self.run_folder
        asked = self.config_init[sub].get("ckpt_path")
        self.config_init[sub]["ckpt_path"] = None if folder.checkpoint is None else str(folder.checkpoint)
        if asked in ("best", "last"):
            for writer in (cb for cb in self.trainer.callbacks if isinstance(cb, TestMetricsWriter)):
                writer.selection = f"--ckpt_path {asked}: {asked}.ckpt of the newest run"

    def before_fit(self) -> None:
        self._restore_from()

    def _evaluate(self) -> None:
        self._restore_from()
        hparams = (self.checkpoint or {}).get("hyper_parameters") or {}
        dm = self.datamodule
        want = (hparams.get("in_dim"), hparams.get("out_dim"))
        have = (getattr(dm, "in_dim", None), getattr(dm, "out_dim", None))
        if None not in want and None not in have and tuple(want) != tuple(have):
            raise CheckpointError(
                f"checkpoint {self.run_folder.checkpoint} maps {want[0]} inputs to {want[1]} outputs, but the data "
                f"({type(dm).__name__}) has {have[0]} inputs and {have[1]} outputs: use the config of the data it was "
                "trained on"
            )

    before_validate = _evaluate
    before_test = _evaluate
    before_predict = _evaluate

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit"):
            ckpt, why = self._checkpoint_to_test()
            for writer in (cb for cb in self.trainer.callbacks if isinstance(cb, TestMetricsWriter)):
                writer.selection = why
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)

    def _checkpoint_to_test(self) -> tuple[str | None, str]:
        """The checkpoint a fit is tested on, and why: the best by validation, else
        ``last.ckpt`` (never one chosen on test data), else the weights in memory."""
        callback = self.trainer.checkpoint_callback
        if callback is None:  # --trainer.enable_checkpointing false
            return None, "the weights in memory at the end of fit (checkpointing is off)"
        if callback.best_model_path:
            how = f"lowest {callback.monitor} on the validation data" if callback.monitor else "latest save (no monitor)"
            return callback.best_model_path, f"best.ckpt: {how}"
        last = callback.last_model_path
        if last and Path(last).is_file():
            why = "no validation data (n_val 0), so no checkpoint was selected" if not has_validation(self.trainer) else "no best checkpoint was saved"
            return last, f"last.ckpt: {why}"
        return None, "the weights in memory at the end of fit (no checkpoint was saved)"


def config_file_args(args: list[str]) -> list[str]:
    """The values of ``--config``/``-c`` in a command line."""
    found = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


EPILOG = (
    "flare export --ckpt_path CKPT [--format torch_export|onnx] [--output FILE]: write a trained checkpoint as a "
    "self-contained model (flare export --help). Start from a config: flare fit --config configs/quickstart.yaml"
)


def make_cli(args: list[str] | None = None, run: bool = True) -> FlareCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]``."""
    compat.check_private_api()
    untested = compat.untested_lightning()
    if untested:
        rank_zero_warn(untested)
    return FlareCLI(
        SurrogateModule,
        subclass_mode_data=True,
        save_config_callback=RunRecords,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"epilog": EPILOG},
        args=args,
        run=run,
    )


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of ``flare`` and ``python -m flare_lightning``; ``flare export`` writes a
    checkpoint as a self-contained model (``flare_lightning.export``)."""
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["export"]:
        from flare_lightning.export import export_main

        export_main(argv[1:])
        return
    make_cli(args)


def main() -> None:
    """``flare`` and ``python -m flare_lightning``: ``cli_main``, with the project's own refusals
    (bad config values, checkpoints, data, resumes, run folders, a diverged fit) printed as one
    line naming what is wrong and exit status 2, not a traceback (``FLARE_TRACEBACK=1`` shows it)."""
    from datamodules.checks import DataFormatError
    from flare_lightning.callbacks.finite_loss import NonFiniteLossError
    from flare_lightning.runs.checkpoint_config import ResumeChangeError
    from flare_lightning.runs.checkpoint_io import CheckpointError, UnsafeCheckpointError
    from flare_lightning.runs.config_checks import ConfigError
    from flare_lightning.runs.folder import RunFolderError
    from flare_lightning.runs.lock import RunInUseError

    refusals = (ConfigError, CheckpointError, UnsafeCheckpointError, DataFormatError, ResumeChangeError,
                RunFolderError, RunInUseError, NonFiniteLossError)
    compat.quiet_upstream_noise()
    try:
        cli_main()
    except refusals as err:
        if os.environ.get("FLARE_TRACEBACK") == "1":
            raise
        print(f"flare: error ({type(err).__name__}): {err}", file=sys.stderr)
        raise SystemExit(2) from None
