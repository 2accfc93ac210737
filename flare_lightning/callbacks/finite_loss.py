"""Stop a fit whose loss is no longer finite, with an error naming the epoch and step."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

# Epoch values of the training loss: "train/loss_epoch" when it is also logged per step (as
# SurrogateModule logs it), "train/loss" when a module logs it once per epoch.
TRAIN_KEYS = ("train/loss_epoch", "train/loss")
VAL_KEYS = ("val/loss",)


class NonFiniteLossError(RuntimeError):
    """The training (or validation) loss became NaN or infinite."""


class FiniteLossCheck(EarlyStopping):
    """Raises ``NonFiniteLossError`` (so ``flare fit`` exits non-zero) when the epoch's
    training loss, or the validation loss, is NaN or infinite. It reads the epoch values
    that are logged anyway, once per epoch: no host sync per step.

    It is an ``EarlyStopping`` only for where Lightning calls it: with the monitoring
    callbacks, after the module's own ``on_train_epoch_end`` (where a module may log its
    epoch loss) and before the checkpoint callback, so a
    non-finite epoch does not overwrite ``last.ckpt`` (checkpoints saved every few steps
    still can). None of ``EarlyStopping``'s own logic runs.

    Args:
        enabled: check the losses.
    """

    def __init__(self, enabled: bool = True) -> None:
        super().__init__(monitor=TRAIN_KEYS[-1], strict=False, check_finite=False)
        self.enabled = enabled

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def _check(self, trainer: L.Trainer, keys: tuple[str, ...], what: str) -> None:
        key = next((k for k in keys if k in trainer.callback_metrics), None)
        if key is None:
            return
        value = float(trainer.callback_metrics[key])
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"the {what} loss ({key}) is {value} at epoch {trainer.current_epoch} (global step "
                f"{trainer.global_step}): training diverged or the data hold non-finite values. Lower "
                "model.lr, check the data, or try another precision; last.ckpt holds the last finite weights"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking:
            self._check(trainer, TRAIN_KEYS, "training")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._check(trainer, VAL_KEYS, "validation")
