"""Stop a fit whose loss is no longer finite, with an error naming the epoch and step."""

from __future__ import annotations

import math

import lightning as L

# Epoch values of the training loss: "train/loss_epoch" when it is also logged per step,
# "train/loss" when it is logged once per epoch (the fast step accumulates it on device).
TRAIN_KEYS = ("train/loss_epoch", "train/loss")
VAL_KEYS = ("val/loss",)


class NonFiniteLossError(RuntimeError):
    """The training (or validation) loss became NaN or infinite."""


class FiniteLossCheck(L.Callback):
    """Raises ``NonFiniteLossError`` (so ``flare fit`` exits non-zero) when the epoch's
    training loss, or the validation loss, is NaN or infinite. It reads the epoch values
    that are logged anyway, once per epoch: no host sync per step. It runs before the
    checkpoint callback of the same hook, so ``last.ckpt`` keeps the last finite weights
    (unless checkpoints are also saved every few steps).

    Args:
        enabled: check the losses.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

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
