"""The ``flare`` command: LightningCLI with fit / validate / test / predict."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from flare_lightning.callbacks.checkpoint import BestAndLastCheckpoint
from flare_lightning.callbacks.epoch_summary import EpochSummary
from flare_lightning.callbacks.prediction_writer import PredictionWriter
from flare_lightning.callbacks.test_metrics import TestMetricsWriter
from flare_lightning.module import SurrogateModule
from flare_lightning.runs import BEST, resolve_checkpoint


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
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="after fit, test the best checkpoint and write test_metrics.json into the run folder",
        )

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit") and self.trainer.checkpoint_callback is not None:
            best = self.trainer.checkpoint_callback.best_model_path or None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)

    def _use_checkpoint_run(self, subcommand: str, subfolder: bool) -> None:
        """Resolve ``--ckpt_path best|last`` to the newest run's checkpoint and point the CSV
        logger at that checkpoint's run: its ``<subcommand>/`` subfolder for evaluation, or
        the run folder itself when resuming a fit, so a resumed run stays one run."""
        cfg = self.config_init[subcommand]
        csv = next((lg for lg in self.trainer.loggers if isinstance(lg, CSVLogger)), None)
        save_dir = csv.save_dir if csv else self.trainer.default_root_dir
        name = csv.name if csv else "lightning_logs"
        cfg["ckpt_path"] = resolve_checkpoint(cfg.get("ckpt_path"), save_dir, name)
        if not cfg["ckpt_path"] or csv is None or Path(cfg["ckpt_path"]).parent.name != "checkpoints":
            return
        run = Path(cfg["ckpt_path"]).parent.parent
        if subfolder:
            logger = CSVLogger(save_dir=run, name="", version=subcommand)
        else:
            logger = CSVLogger(save_dir=run.parent, name="", version=run.name)
        self.trainer.loggers = [logger, *(lg for lg in self.trainer.loggers if lg is not csv)]

    def before_fit(self) -> None:
        """Resume from ``--ckpt_path`` inside its run (without it on SLURM, Lightning
        resumes from its own pre-emption checkpoint)."""
        self._use_checkpoint_run("fit", subfolder=False)

    def _evaluate_in_run(self) -> None:
        self._use_checkpoint_run(self.config.subcommand, subfolder=True)

    before_validate = _evaluate_in_run
    before_test = _evaluate_in_run
    before_predict = _evaluate_in_run


def make_cli(args: list[str] | None = None, run: bool = True) -> FlareCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]``."""
    return FlareCLI(
        SurrogateModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of ``flare`` and ``python -m flare_lightning``."""
    make_cli(args)
