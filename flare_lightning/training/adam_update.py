"""The Adam/AdamW update of the fast step, as plain functions over torch's own optimizer state.

The fast step replays this update inside a CUDA graph on a GPU and runs it eagerly elsewhere,
so the CPU tests compare exactly the arithmetic the graph runs with ``torch.optim.Adam`` and
``torch.optim.AdamW`` (in float64). Learning rate and betas are device tensors, written before
each step, because a graph cannot read host numbers that change (OneCycle changes lr and beta1
every step); checkpoints keep torch's state format, so either optimizer resumes them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

# The optimizers the update reproduces, by exact type: a subclass (or NAdam, RAdam, Adamax,
# which also carry betas and eps) steps differently and would silently train as Adam.
REPRODUCED = (torch.optim.Adam, torch.optim.AdamW)
UNSUPPORTED_FLAGS = ("amsgrad", "maximize", "differentiable")


def check_adam(optimizer: Optimizer) -> None:
    """Refuse an optimizer the captured update does not reproduce step for step."""
    kind = type(optimizer)
    if kind not in REPRODUCED:
        raise ValueError(
            f"model.fast_step runs its own copy of torch.optim.Adam/AdamW's update, so it trains only with "
            f"those two; got {kind.__module__}.{kind.__qualname__} (model.optimizer). Use Adam or AdamW, "
            "or drop model.fast_step"
        )
    for i, group in enumerate(optimizer.param_groups):
        for flag in UNSUPPORTED_FLAGS:
            if group.get(flag):
                raise ValueError(
                    f"model.fast_step reproduces {kind.__name__} without {flag}; param group {i} sets "
                    f"{flag}=True (model.optimizer.{flag}); drop it or drop model.fast_step"
                )


def prepare_state(optimizer: Optimizer, device: torch.device, capturable: bool) -> None:
    """Give every parameter torch's Adam state on ``device`` (a graph cannot create it lazily),
    with float32 step counts beside the parameters, as torch's capturable Adam keeps them.

    Called after Lightning restored a checkpoint's optimizer: one written by an eager run (or
    on a CPU) keeps its step counts on the host, where a captured update could not advance
    them. ``capturable`` marks the groups for torch, so a checkpoint of a captured run loads
    with its step counts on the GPU."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            else:
                state["step"] = torch.as_tensor(state["step"]).to(device, torch.float32)
        group["capturable"] = capturable


def plain_state(optimizer: Optimizer) -> None:
    """Undo ``prepare_state``'s capturable format for torch's own eager step (e.g. a captured
    run's checkpoint resumed without the fast step): torch refuses capturable groups off CUDA,
    and reads non-capturable step counts on the host (on a GPU it would sync once per tensor)."""
    for group in optimizer.param_groups:
        if not group.get("capturable"):
            continue
        group["capturable"] = False
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].cpu()


def group_lists(group: dict, state: dict, lr: Tensor, beta1: Tensor, beta2: Tensor, decoupled: bool,
                shared_step: bool = False) -> tuple:
    """One param group as ``adam_group_update_``'s arguments, from the optimizer's own state;
    parameters without a gradient are left out (torch skips them: no step, no decay)."""
    params = [p for p in group["params"] if p.grad is not None]
    states = [state[p] for p in params]
    return (params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states], lr, beta1, beta2, float(group["weight_decay"]), float(group["eps"]),
            decoupled, shared_step)


def adam_group_update_(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    steps: list[Tensor], lr: Tensor, beta1: Tensor, beta2: Tensor, weight_decay: float, eps: float,
    decoupled: bool, shared_step: bool = False, skip: Tensor | None = None,
) -> None:
    """torch's Adam (``decoupled``: AdamW) update of one group's tensor lists, in place.

    Each parameter's bias correction uses its own step count, as torch's: counts differ once a
    parameter missed a gradient. ``shared_step`` says the caller knows they are all equal (the
    fast step counts steps on the host), so one count serves the group: a dozen fewer kernels
    than a correction per parameter, which foreach ops apply one tensor at a time.

    ``skip`` (a device scalar, 1.0 or 0.0; the gradients finite, e.g. zeroed) makes the step a
    no-op without the host reading it, as GradScaler's skipped ``optimizer.step()``: no count
    advances, the moments keep their values (their decay is 1 and their gain 0) and the learning
    rate is 0. At 0.0 every value is the plain update's, bit for bit.
    """
    if not params:
        return
    gain1, gain2 = 1.0 - beta1, 1.0 - beta2
    decay1, decay2, increment = beta1, beta2, 1.0
    if skip is not None:
        keep = 1.0 - skip
        lr, gain1, gain2, increment = lr * keep, gain1 * keep, gain2 * keep, keep
        decay1, decay2 = torch.where(skip > 0, 1.0, beta1), torch.where(skip > 0, 1.0, beta2)
    torch._foreach_add_(steps, increment)
    if weight_decay != 0:
        if decoupled:
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(exp_avgs, decay1)
    torch._foreach_add_(exp_avgs, torch._foreach_mul(grads, gain1))
    torch._foreach_mul_(exp_avg_sqs, decay2)
    sq = torch._foreach_mul(grads, grads)
    torch._foreach_mul_(sq, gain2)
    torch._foreach_add_(exp_avg_sqs, sq)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    if shared_step:
        step = steps[0] if skip is None else steps[0].clamp(min=1.0)  # a first step skipped stays at 0
        torch._foreach_div_(denom, (1.0 - beta2**step).sqrt())
        torch._foreach_add_(denom, eps)
        update = torch._foreach_div(exp_avgs, denom)
        torch._foreach_mul_(update, -lr / (1.0 - beta1**step))
    else:
        step = torch.stack(steps).to(beta1.dtype)  # [n]; a 0-dim beta would not promote it
        if skip is not None:
            step = step.clamp(min=1.0)
        torch._foreach_div_(denom, (1.0 - beta2**step).sqrt().unbind())
        torch._foreach_add_(denom, eps)
        update = torch._foreach_div(exp_avgs, denom)
        torch._foreach_mul_(update, (-lr / (1.0 - beta1**step)).unbind())
    torch._foreach_add_(params, update)


def by_dtype(tensors: list[Tensor]) -> list[list[Tensor]]:
    """``tensors`` grouped by dtype, in order (multi-tensor kernels take one dtype a list)."""
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())


@torch.no_grad()
def zero_where_(tensors: list[Tensor], condition: Tensor) -> None:
    """Zero all ``tensors`` in place when the device bool ``condition`` holds, without reading it on
    the host. There is no multi-tensor "where", and a kernel per tensor would be hundreds a step:
    the tensors go into one flat buffer per dtype, it is zeroed or not, and they are copied back."""
    for same in by_dtype(tensors):
        flat = torch.cat([t.reshape(-1) for t in same]).masked_fill_(condition, 0.0)
        torch._foreach_copy_(same, [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in same]), same)])


@torch.no_grad()
def clipped_adam_update_(groups: list[tuple], clip_val: float | None, clip_algorithm: str,
                         skip: Tensor | None = None) -> None:
    """Gradient clipping over all groups, then each group's Adam update, in place.

    ``groups``: per param group ``group_lists``'s tuple. Clipping is torch's ``clip_grad_norm_``
    (total 2-norm, coefficient ``clip / (norm + 1e-6)`` capped at 1) or ``clip_grad_value_``.
    Multi-tensor (foreach) ops: some 40 launches for all parameters. (Compiled by Inductor it
    took more kernels, one per tensor for the norms: 1,493 vs 1,248 per Darcy step.)
    ``skip`` (device scalar, 1.0: the loss scale found an inf or NaN gradient): the gradients
    are zeroed, so nothing non-finite reaches the arithmetic, and the update changes nothing.
    """
    grads = [g for group in groups for g in group[1]]
    if skip is not None:
        zero_where_(grads, skip > 0)
    if clip_val is not None and grads:
        if clip_algorithm == "norm":
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_mul_(grads, torch.clamp(clip_val / (total + 1e-6), max=1.0))
        else:
            torch._foreach_clamp_min_(grads, -clip_val)
            torch._foreach_clamp_max_(grads, clip_val)
    for group in groups:
        adam_group_update_(*group, skip=skip)
