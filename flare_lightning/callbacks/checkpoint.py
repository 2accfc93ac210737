"""Best and last checkpoints, where ``last`` really is the latest epoch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from flare_lightning import compat
from flare_lightning.atomic import remove_stale_temps
from flare_lightning.runs.validation import has_validation


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that refreshes ``last.ckpt`` at every save point.

    Lightning's ``save_last`` only rewrites ``last.ckpt`` when a top-k checkpoint is
    saved in the same step, so an epoch whose monitored metric did not improve leaves
    ``last.ckpt`` behind, and a pre-empted run resumed with ``--ckpt_path last`` would
    repeat epochs. Here ``last.ckpt`` follows the end of every validation (or training
    epoch, when that is where checkpoints are taken).

    Without validation data (``n_val 0``) no checkpoint is selected: only ``last.ckpt``
    is kept (nothing is ever chosen on test data). Temporary files left in the checkpoint
    folder by a save that was killed are removed when a fit starts.
    """

    _last_written_step: int = -1
    _stage: str | None = None  # of the trainer call in progress (setup runs before a checkpoint is restored)
    _trainer: L.Trainer | None = None  # whose ckpt_path names the checkpoint being restored

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        # A private hook (declared in compat.OVERRIDDEN): note the step whose last.ckpt was written.
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_step = trainer.global_step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._stage = stage
        self._trainer = trainer
        if stage == "fit" and trainer.is_global_zero and self.dirpath:
            for tmp in remove_stale_temps(self.dirpath, ".*.ckpt.*.tmp"):
                rank_zero_info(f"removed {tmp}, left by an interrupted checkpoint save")

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the fit's selection on resume only (also from a run folder that moved: ``moved_along``):
        test, validate and predict save nothing, and the best/last paths of the run that wrote their
        checkpoint would only draw Lightning's warning that the folder moved (to the evaluation's subfolder)."""
        if self._stage in (None, "fit"):
            super().load_state_dict(moved_along(state_dict, self.dirpath, self._trainer))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.monitor is not None and self.save_top_k != 0 and not has_validation(trainer):
            rank_zero_info(f"no validation data: no checkpoint is selected on {self.monitor}; only last.ckpt is kept")
            self.save_top_k = 0

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if not self.save_last or compat.skips_saving(self, trainer):
            return
        if self._last_written_step != trainer.global_step:
            self._save_last_checkpoint(trainer, compat.monitor_candidates(self, trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not compat.saves_on_train_epoch_end(self, trainer):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's save_last at train end ignores fast_dev_run, which saves nothing else.
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if compat.saves_on_train_epoch_end(self, trainer):
            self._refresh_last(trainer)


def moved_along(state: dict, dirpath: str | None, trainer: L.Trainer | None) -> dict:
    """The callback state of a checkpoint restored from this callback's own folder after that folder
    moved (another machine or path), with its saved paths moved too; any other state as it is.

    Lightning keeps the best selection only when the saved folder equals the current one, so a run
    folder carried elsewhere would lose it on resume and a worse epoch would take ``best.ckpt``. A
    checkpoint of another run (not in this folder) is a new run: its selection is not carried over.
    """
    old = state.get("dirpath")
    restored = getattr(trainer, "ckpt_path", None)
    if not (old and dirpath and restored) or old == dirpath:
        return state
    if Path(restored).resolve().parent != Path(dirpath).resolve():
        return state

    def move(path: str | None) -> str | None:
        return str(Path(dirpath) / Path(path).relative_to(old)) if path and Path(path).is_relative_to(old) else path

    moved = {**state, "dirpath": dirpath}
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in state:
            moved[key] = move(state[key])
    if "best_k_models" in state:
        moved["best_k_models"] = {move(path): score for path, score in state["best_k_models"].items()}
    rank_zero_info(f"run folder moved: checkpoint selection of {old} carried to {dirpath}")
    return moved
