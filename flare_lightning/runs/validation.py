"""Whether a fit has validation data of its own (``n_val 0`` means none)."""

from __future__ import annotations

import lightning as L


def has_validation(trainer: L.Trainer) -> bool:
    """True when the fit runs validation batches on a validation split: the loaders hold
    batches and the datamodule does not say ``n_val == 0`` (validation that would then
    fall back to other data, such as the test split, must not select checkpoints).
    Meaningful from ``on_train_start`` on, once Lightning has set up the loaders."""
    datamodule = getattr(trainer, "datamodule", None)
    if getattr(datamodule, "n_val", None) == 0:
        return False
    batches = trainer.num_val_batches
    total = sum(batches) if isinstance(batches, (list, tuple)) else batches
    return bool(total) and trainer.limit_val_batches != 0
