"""fp16's dynamic loss scale kept on the device, so a captured step scales, checks and skips
without reading the host.

``torch.amp.GradScaler`` decides on the host whether a step overflowed (``found_inf.item()``),
which a CUDA graph cannot replay. ``DeviceLossScale`` runs GradScaler's own kernels (the
non-finite check with unscaling, the growth/backoff update) on device tensors and leaves the
decision to skip to the update as a tensor (``skip``: 1.0 when a gradient was inf or NaN), which
``adam_update.clipped_adam_update_`` applies arithmetically. Its state reads and writes
GradScaler's ``state_dict`` format, so Lightning's checkpoints carry it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flare_lightning.training.adam_update import by_dtype


class DeviceLossScale:
    """Dynamic loss scaling as ``torch.amp.GradScaler`` does it, with every value on ``device``.

    A step is ``scale_loss`` (before backward), ``unscale_`` (gradients to their true size,
    ``skip`` set when any is inf or NaN), the update (skipped arithmetically when ``skip``), then
    ``update_``: the scale halves (``backoff_factor``) after a skipped step and doubles
    (``growth_factor``) after ``growth_interval`` steps in a row without one.
    """

    def __init__(self, device: torch.device | str, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, growth_tracker: int = 0) -> None:
        if not init_scale > 0:
            raise ValueError(f"DeviceLossScale: init_scale must be positive, got {init_scale}")
        if not (growth_factor > 1.0 and 0.0 < backoff_factor < 1.0 and growth_interval >= 1):
            raise ValueError(
                "DeviceLossScale: needs growth_factor > 1, 0 < backoff_factor < 1 and growth_interval >= 1, got "
                f"{growth_factor}, {backoff_factor}, {growth_interval}"
            )
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.scale = torch.full((), float(init_scale), dtype=torch.float32, device=device)
        self.growth_tracker = torch.full((), int(growth_tracker), dtype=torch.int32, device=device)
        self.skip = torch.zeros((), dtype=torch.float32, device=device)  # 1.0: this step's gradients overflowed
        self._inv_scale = torch.ones((), dtype=torch.float32, device=device)

    @classmethod
    def of(cls, scaler: torch.amp.GradScaler, device: torch.device | str) -> DeviceLossScale:
        """The scale ``scaler`` holds now (e.g. restored from a checkpoint by Lightning)."""
        return cls(device, **_arguments(scaler.state_dict()))

    def state_dict(self) -> dict[str, Any]:
        """GradScaler's format (``scale``, the factors, ``_growth_tracker``); reads the device."""
        return {"scale": float(self.scale), "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": int(self.growth_tracker)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take a GradScaler state (``state_dict``'s format) in place: captured graphs keep reading it."""
        values = _arguments(state)
        self.scale.fill_(values["init_scale"])
        self.growth_tracker.fill_(values["growth_tracker"])
        self.growth_factor = float(values["growth_factor"])
        self.backoff_factor = float(values["backoff_factor"])
        self.growth_interval = int(values["growth_interval"])

    def scale_loss(self, loss: Tensor) -> Tensor:
        """``loss`` times the current scale (what backward runs on)."""
        return loss * self.scale

    @torch.no_grad()
    def unscale_(self, grads: list[Tensor]) -> None:
        """Divide ``grads`` by the scale in place and set ``skip`` to whether any is inf or NaN
        (GradScaler's kernel and arithmetic: one multi-tensor pass, the inverse taken in float64)."""
        self.skip.zero_()
        self._inv_scale.copy_(self.scale.double().reciprocal().float())
        for same in by_dtype(grads):
            torch._amp_foreach_non_finite_check_and_unscale_(same, self.skip, self._inv_scale)

    @torch.no_grad()
    def update_(self) -> None:
        """After the step: back off when it was skipped, grow after ``growth_interval`` clean steps."""
        torch._amp_update_scale_(self.scale, self.growth_tracker, self.skip, self.growth_factor,
                                 self.backoff_factor, self.growth_interval)


def _arguments(state: dict[str, Any]) -> dict[str, Any]:
    """``DeviceLossScale``'s arguments from a GradScaler ``state_dict``; a missing key is named."""
    keys = {"scale": "init_scale", "growth_factor": "growth_factor", "backoff_factor": "backoff_factor",
            "growth_interval": "growth_interval", "_growth_tracker": "growth_tracker"}
    missing = sorted(set(keys) - set(state))
    if missing:
        raise ValueError(f"DeviceLossScale: the loss-scale state lacks {missing}; expected GradScaler's "
                         f"state_dict keys {sorted(keys)}")
    return {arg: state[key] for key, arg in keys.items()}
