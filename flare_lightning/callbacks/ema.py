"""Exponential moving average of the weights, evaluated and checkpointed in their place."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging


class EMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` (``avg = decay·avg + (1-decay)·w`` after every
    optimizer step, the first update copying ``w``): validation runs on the averaged
    weights, checkpoints hold them as ``state_dict`` (the raw ones as
    ``current_model_state``, for resuming), and after fit the module keeps them.

    One change: restoring a checkpoint to *evaluate* it (``test``/``validate``/``predict``
    with ``ckpt_path``, also the test after fit in the same process) keeps the averaged
    weights of its ``state_dict``. Lightning's callback, still holding its fit-time copy,
    would load the raw weights back instead.

    Args:
        decay: weight of the old average at each update (0.999: about the last 1000 steps).
        update_every_n_steps: update every n optimizer steps.
        update_starting_at_step: first step to average (None: from the start).
        update_starting_at_epoch: also update at the end of each epoch from this one (None: never).
        use_buffers: average buffers too (the normalisation statistics are constant, so
            either way they equal the model's).
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        use_buffers: bool = True,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}")
        super().__init__(
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
            update_starting_at_epoch=update_starting_at_epoch,
            use_buffers=use_buffers,
        )

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == "fit":
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
