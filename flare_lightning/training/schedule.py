"""The default learning-rate schedule: torch's OneCycle over the fit's batches, made safe for
the step counts where torch's own arithmetic divides by zero."""

from __future__ import annotations

import torch


def one_cycle_pct(pct_start: float, total_steps: int) -> float:
    """``pct_start`` as OneCycleLR can take it over ``total_steps``.

    OneCycleLR ends its warm-up at step ``pct_start * total_steps - 1``; where that is exactly 0
    (5% of 20 steps, 10% of 10: a short benchmark or a smoke run) its first step divides by zero.
    Such a schedule ends its warm-up one step later (at step 1), or has none where that would leave
    nothing to anneal (two steps or fewer)."""
    if float(pct_start * total_steps) - 1 != 0:  # torch's own expression (lr_scheduler.OneCycleLR)
        return pct_start
    return 2 / total_steps if total_steps > 2 else 0.5 / total_steps


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int, pct_start: float, div_factor: float,
              final_div_factor: float) -> torch.optim.lr_scheduler.OneCycleLR:
    """Per-batch OneCycle peaking at each parameter group's current lr, over ``total_steps`` (at least 1)."""
    total_steps = max(1, int(total_steps))
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[float(group["lr"]) for group in optimizer.param_groups],
        total_steps=total_steps,
        pct_start=one_cycle_pct(pct_start, total_steps),
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )
