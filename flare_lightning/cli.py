"""The ``flare`` command: LightningCLI with fit / validate / test / predict."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from flare_lightning.callbacks.checkpoint import BestAndLastCheckpoint
from flare_lightning.callbacks.epoch_summary import EpochSummary
from flare_lightning.callbacks.finite_loss import FiniteLossCheck
from flare_lightning.callbacks.prediction_writer import PredictionWriter
from flare_lightning.callbacks.run_info import RunInfoWriter
from flare_lightning.callbacks.test_metrics import TestMetricsWriter
from flare_lightning.checkpoint_io import SafeCheckpointIO
from flare_lightning.csv_history import ContinuingCSVLogger, logging_step
from flare_lightning.module import SurrogateModule
from flare_lightning.run_loggers import SaveConfigToLoggers, name_loggers_like_csv
from flare_lightning.runs import BEST, continues_run, resolve_checkpoint
from flare_lightning.validation import has_validation
from flare_lightning.slurm import pin_run_to_slurm_job


class FlareCLI(LightningCLI):
    """Links data dimensions into the model, keeps best/last checkpoints, resolves
    ``--ckpt_path best|last`` to the newest run on disk, and records test metrics."""

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
        parser.add_lightning_class_args(RunInfoWriter, "run_info")
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

    def instantiate_trainer(self, **kwargs):
        """The trainer, with checkpoints written beside their destination and read weights-only."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        # Global and per process: every run (and every DDP process, which parses again) sets it.
        torch.set_float32_matmul_precision(config.get("float32_matmul_precision") or "highest")
        name_loggers_like_csv(config.get("trainer", {}).get("logger"))
        if self.subcommand == "fit":
            pin_run_to_slurm_job(config.get("trainer"))

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except SystemExit as exit:
            given = [str(a) for a in (sys.argv[1:] if args is None else args)]
            if exit.code and not any(a.startswith(("--config", "-c")) for a in given):
                sub = next((a for a in given if not a.startswith("-")), "fit")
                print(f"hint: start from a dataset config: flare {sub} --config configs/<dataset>.yaml, "
                      f"e.g. flare {sub} --config configs/quickstart.yaml", file=sys.stderr)
            raise

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        # --trainer.enable_checkpointing false: drop our checkpoint callback, which Lightning
        # would otherwise reject.
        if config.get("enable_checkpointing") is False:
            callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

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

    def _use_checkpoint_run(self, subcommand: str, subfolder: bool) -> None:
        """Resolve ``--ckpt_path best|last`` to the newest run's checkpoint and point the CSV
        logger at that checkpoint's run: its ``<subcommand>/`` subfolder for evaluation, or
        the run folder itself when resuming a fit, so a resumed run stays one run."""
        cfg = self.config_init[subcommand]
        csv = next((lg for lg in self.trainer.loggers if isinstance(lg, CSVLogger)), None)
        save_dir = csv.save_dir if csv else self.trainer.default_root_dir
        name = csv.name if csv else "lightning_logs"
        asked = cfg.get("ckpt_path")
        cfg["ckpt_path"] = ckpt = resolve_checkpoint(asked, save_dir, name)
        if asked in ("best", "last"):
            for writer in (cb for cb in self.trainer.callbacks if isinstance(cb, TestMetricsWriter)):
                writer.selection = f"--ckpt_path {asked}: {asked}.ckpt of the newest run"
        if csv is None:
            return
        if not subfolder:
            self._continue_history(csv, ckpt, save_dir, name)
            return
        if not ckpt or Path(ckpt).parent.name != "checkpoints":
            return
        logger = CSVLogger(save_dir=Path(ckpt).parent.parent, name="", version=subcommand)
        self.trainer.loggers = [logger, *(lg for lg in self.trainer.loggers if lg is not csv)]

    def _continue_history(self, csv: CSVLogger, ckpt: str | None, save_dir: str, name: str) -> None:
        """A fit from a run's own ``last.ckpt`` continues that run: same folder, and its
        ``metrics.csv`` keeps the rows before the checkpoint. A fit from any other checkpoint
        (a best.ckpt, another logger's run) is a new run in a new folder."""
        if ckpt is None:
            hpc = self.trainer._checkpoint_connector._hpc_resume_path if SLURMEnvironment.detect() else None
            if hpc is None:
                return
            run, ckpt = Path(csv.log_dir), hpc  # a requeued SLURM job resumes its pre-emption checkpoint
        else:
            run = continues_run(ckpt, save_dir, name)
            if run is None:
                return
        logger = ContinuingCSVLogger(save_dir=str(run.parent), name="", version=run.name, resume_step=logging_step(ckpt))
        self.trainer.loggers = [logger, *(lg for lg in self.trainer.loggers if lg is not csv)]

    def before_fit(self) -> None:
        """Resume from ``--ckpt_path`` inside its run when it is that run's last.ckpt (without
        it on SLURM, Lightning resumes from the job's own pre-emption checkpoint: see
        ``flare_lightning.slurm``)."""
        self._use_checkpoint_run("fit", subfolder=False)

    def _evaluate_in_run(self) -> None:
        subcommand = self.config.subcommand
        if not self.config_init[subcommand].get("ckpt_path"):
            raise SystemExit(
                f"flare {subcommand}: no trained weights given: pass --ckpt_path best (the newest run's "
                "best checkpoint), last, or a .ckpt file"
            )
        self._use_checkpoint_run(subcommand, subfolder=True)

    before_validate = _evaluate_in_run
    before_test = _evaluate_in_run
    before_predict = _evaluate_in_run


EPILOG = (
    "flare export --ckpt_path CKPT [--format torch_export|onnx] [--output FILE]: write a trained checkpoint as a "
    "self-contained model (flare export --help). Start from a config: flare fit --config configs/quickstart.yaml"
)


def make_cli(args: list[str] | None = None, run: bool = True) -> FlareCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]``."""
    return FlareCLI(
        SurrogateModule,
        subclass_mode_data=True,
        save_config_callback=SaveConfigToLoggers,
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
