"""A training step with no host overhead: the whole optimizer step replayed as a CUDA graph.

At the paper's sizes (a few thousand points, batch 2) a FLARE step is some 1,700 small
kernels whose launch cost, not their work, sets the step time. ``FastTrainStep`` runs the
forward, the loss, the backward, gradient clipping and the optimizer update as one
captured CUDA graph (two under multi-process training, with the gradient all-reduce
between them), reads the schedule's learning rate and beta1 from device tensors that are
written in place before each replay, and sums the epoch's per-sample losses on the device,
so a step costs one graph launch and no host synchronisation.

Off CUDA (or with ``capture=False``) the same sequence runs eagerly, step for step: that is
what the CPU tests compare against Lightning's automatic optimization, DDP included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

LossFn = Callable[[dict[str, Tensor]], Tensor]  # batch -> per-sample losses [B]
TRAIN_KEYS = ("x", "y", "mask")
FLAG_KEYS = ("padded",)  # host-side Python values of a batch that change the captured computation
MAX_GRAPHS = 16  # batch shapes captured at most; further shapes run eagerly (each graph holds memory)


def batch_key(batch: dict[str, Tensor | None], keys: tuple[str, ...] = TRAIN_KEYS) -> tuple:
    """Shapes and dtypes of a batch's tensors (None for an absent one) and its flags (e.g.
    ``padded``): one captured graph per distinct key."""
    shapes = tuple((k, None) if batch[k] is None else (k, tuple(batch[k].shape), batch[k].dtype) for k in keys)
    return shapes + tuple((k, batch[k]) for k in FLAG_KEYS if k in batch)


@contextmanager
def uncached_autocast(device: torch.device) -> Iterator[None]:
    """Re-enter the ambient autocast state with its weight-cast cache off: cached casts
    made during capture would be replayed stale (CUDA graphs need ``cache_enabled=False``)."""
    kind = device.type
    if not torch.is_autocast_enabled(kind):
        yield
        return
    with torch.autocast(kind, dtype=torch.get_autocast_dtype(kind), cache_enabled=False):
        yield


def _warn_shapes(count: int) -> None:
    warnings.warn(
        f"fast_step: {count} batch shapes are captured already; further shapes run eagerly. "
        "Meshes of varying sizes: set data.init_args.pad_to_buckets true",
        stacklevel=3,
    )


@dataclass
class _Captured:
    """Static inputs and graphs of one batch shape."""

    seen: int = 0
    inputs: dict[str, Tensor] = field(default_factory=dict)
    flags: dict[str, object] = field(default_factory=dict)
    graphs: list[torch.cuda.CUDAGraph] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)


class FastTrainStep:
    """Forward, backward, gradient all-reduce, clipping and optimizer step of one batch.

    Args:
        loss_fn: maps a batch (``x``, ``y``, ``mask``) to per-sample losses [B]; the step
            minimises their mean and adds their sum and count to ``epoch_sums``.
        params: the parameters the optimizer updates.
        optimizer: a torch optimizer whose groups accept tensor ``lr`` and ``betas`` when
            captured (Adam, AdamW).
        clip_val: gradient clipping threshold (None or 0: off).
        clip_algorithm: ``norm`` (total 2-norm, as Lightning's default) or ``value``.
        capture: replay the step as a CUDA graph (needs CUDA parameters).
        warmup_steps: eager steps per batch shape before it is captured (compilation,
            lazy optimizer state and library handles are made in these).
    """

    def __init__(
        self,
        loss_fn: LossFn,
        params: list[nn.Parameter],
        optimizer: Optimizer,
        clip_val: float | None = None,
        clip_algorithm: str = "norm",
        capture: bool = True,
        warmup_steps: int = 3,
    ) -> None:
        if clip_algorithm not in ("norm", "value"):
            raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value', got {clip_algorithm!r}")
        self.loss_fn = loss_fn
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("FastTrainStep: no parameter requires a gradient")
        self.optimizer = optimizer
        self.clip_val = clip_val or None
        self.clip_algorithm = clip_algorithm
        self.device = self.params[0].device
        self.capture = capture and self.device.type == "cuda"
        self.warmup_steps = max(1, warmup_steps)
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.epoch_sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # [loss sum, samples]
        self._captured: dict[tuple, _Captured] = {}
        self._hparams: list[tuple[Tensor, Tensor, Tensor]] = []
        if self.capture:
            self._make_capturable()

    # --- the step, in its three parts --------------------------------------------
    def _forward_backward(self, batch: dict[str, Tensor]) -> None:
        with uncached_autocast(self.device):
            losses = self.loss_fn(batch)  # [B]
        losses.mean().backward()
        sums = self.epoch_sums
        sums[0].add_(losses.detach().sum().to(sums.dtype))
        sums[1].add_(losses.shape[0])

    def _allreduce_grads(self, grads: list[Tensor] | None = None) -> None:
        """Average gradients over processes in one collective (DDP's reducer is bypassed:
        Lightning disables it in manual optimization)."""
        if self.world_size == 1:
            return
        grads = self._grads() if grads is None else grads
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        torch._foreach_copy_(grads, torch._utils._unflatten_dense_tensors(flat, grads))

    def _update(self) -> None:
        if not self.capture:
            self._clip([p for p in self.params if p.grad is not None])
            self.optimizer.step()
            return
        adamw = isinstance(self.optimizer, torch.optim.AdamW)
        groups = [group_lists(group, self.optimizer.state, *hparams, bool(group.get("decoupled_weight_decay", adamw)))
                  for group, hparams in zip(self.optimizer.param_groups, self._hparams)]
        clipped_adam_update_(groups, self.clip_val, self.clip_algorithm)
        # LR schedulers warn when they step before optimizer.step() was ever called; the
        # update above is that step (torch marks it on the optimizer the same way).
        self.optimizer._opt_called = True

    def _clip(self, params: list[Tensor]) -> None:
        if self.clip_val is None:
            return
        if self.clip_algorithm == "norm":
            torch.nn.utils.clip_grad_norm_(params, self.clip_val, foreach=True)
        else:
            torch.nn.utils.clip_grad_value_(params, self.clip_val, foreach=True)

    def _grads(self) -> list[Tensor]:
        for p in self.params:  # every rank must reduce the same list
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.params]

    # --- running -------------------------------------------------------------------
    def __call__(self, batch: dict[str, Tensor]) -> None:
        """One optimizer step on ``batch`` (``x`` [B, N, in], ``y`` [B, N, out], ``mask`` [B, N])."""
        if not self.capture:
            self.optimizer.zero_grad(set_to_none=True)
            self._forward_backward(batch)
            self._allreduce_grads()
            self._update()
            return
        key = batch_key(batch)
        if key not in self._captured and len(self._captured) >= MAX_GRAPHS:
            _warn_shapes(len(self._captured))
            self._write_hparams()
            self._eager_on_side_stream(batch)
            return
        entry = self._captured.setdefault(key, _Captured())
        self._write_hparams()
        if entry.seen < self.warmup_steps:
            entry.seen += 1
            self._eager_on_side_stream(batch)
            return
        if not entry.graphs:
            self._capture(entry, batch)
        for name, t in entry.inputs.items():
            t.copy_(batch[name], non_blocking=True)
        entry.graphs[0].replay()
        if len(entry.graphs) > 1:
            self._allreduce_grads(entry.grads)
            entry.graphs[1].replay()

    def reset_epoch(self) -> None:
        self.epoch_sums.zero_()

    def release_graphs(self) -> None:
        """Forget captured graphs (parameters moved or were replaced); later steps recapture."""
        self._captured.clear()

    # --- CUDA graphs -------------------------------------------------------------------
    def _eager_on_side_stream(self, batch: dict[str, Tensor]) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self.optimizer.zero_grad(set_to_none=True)
            self._forward_backward(batch)
            self._allreduce_grads()
            self._update()
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def _capture(self, entry: _Captured, batch: dict[str, Tensor]) -> None:
        entry.inputs = {name: batch[name].clone() for name in TRAIN_KEYS}
        entry.flags = {name: batch[name] for name in FLAG_KEYS if name in batch}
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates grads in the graph's pool
        torch.cuda.synchronize(self.device)
        first = torch.cuda.CUDAGraph()
        with torch.cuda.graph(first):
            self._forward_backward(entry.inputs | entry.flags)
            if self.world_size == 1:
                self._update()
        entry.graphs.append(first)
        if self.world_size > 1:
            entry.grads = self._grads()
            second = torch.cuda.CUDAGraph()
            with torch.cuda.graph(second):
                self._update()
            entry.graphs.append(second)
        # Graph-owned gradients are overwritten by every replay: hide them from Python code.
        for p in self.params:
            p.grad = None

    def _make_capturable(self) -> None:
        """One (lr, beta1, beta2) device tensor triple per group, and the optimizer state on
        the device (also when resumed from an eager run's checkpoint)."""
        for group in self.optimizer.param_groups:
            check_adam_group(group, type(self.optimizer).__name__)
            self._hparams.append(tuple(torch.zeros((), device=self.device) for _ in range(3)))
            for p in group["params"]:
                state = self.optimizer.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=self.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif state["step"].device != self.device:
                    state["step"] = state["step"].to(self.device, torch.float32)
            group["capturable"] = True  # the state format of torch's capturable Adam

    def _write_hparams(self) -> None:
        """Copy the schedule's current values into the tensors the graph reads."""
        for group, (lr, beta1, beta2) in zip(self.optimizer.param_groups, self._hparams):
            lr.fill_(group["lr"])
            beta1.fill_(group["betas"][0])
            beta2.fill_(group["betas"][1])


def check_adam_group(group: dict, name: str) -> None:
    """The captured update implements Adam/AdamW without amsgrad or maximize."""
    if "betas" not in group or "eps" not in group or group.get("amsgrad") or group.get("maximize"):
        raise TypeError(f"fast_step captures an Adam or AdamW update (no amsgrad, no maximize), got {name}")


def group_lists(group: dict, state: dict, lr: Tensor, beta1: Tensor, beta2: Tensor, decoupled: bool) -> tuple:
    """One Adam/AdamW param group as ``adam_lists_``'s arguments, from the optimizer's own
    state (checkpoints stay torch's); lr and betas are device tensors (torch 2.11's foreach
    Adam turns a tensor beta1 into a host number, which a CUDA graph cannot capture).
    Parameters without a gradient are left out."""
    params = [p for p in group["params"] if p.grad is not None]
    states = [state[p] for p in params]
    return (params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
            [s["step"] for s in states], lr, beta1, beta2, float(group["weight_decay"]), float(group["eps"]), decoupled)


def adam_lists_(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    steps: list[Tensor], lr: Tensor, beta1: Tensor, beta2: Tensor, weight_decay: float, eps: float,
    decoupled: bool,
) -> None:
    """The Adam/AdamW update of one group's tensor lists, in place (torch's formula)."""
    if not params:
        return
    torch._foreach_add_(steps, 1.0)
    if weight_decay != 0:
        if decoupled:  # AdamW
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, torch._foreach_mul(grads, 1.0 - beta1))
    torch._foreach_mul_(exp_avg_sqs, beta2)
    sq = torch._foreach_mul(grads, grads)
    torch._foreach_mul_(sq, 1.0 - beta2)
    torch._foreach_add_(exp_avg_sqs, sq)
    step = steps[0]  # one group's parameters share their step count
    step_size = lr / (1.0 - beta1**step)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, (1.0 - beta2**step).sqrt())
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(exp_avgs, denom)
    torch._foreach_mul_(update, -step_size)
    torch._foreach_add_(params, update)


@torch.no_grad()
def clipped_adam_update_(groups: list[tuple], clip_val: float | None, clip_algorithm: str) -> None:
    """Gradient clipping over all groups, then each group's Adam update, in place.

    ``groups``: per param group ``(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1,
    beta2, weight_decay, eps, decoupled)``. Clipping is torch's ``clip_grad_norm_`` (total
    2-norm, coefficient ``clip / (norm + 1e-6)`` capped at 1) or ``clip_grad_value_``.
    Multi-tensor (foreach) ops: some 40 launches for all parameters. (Compiled by Inductor
    it took more kernels, one per tensor for the norms: 1,493 vs 1,248 per Darcy step.)
    """
    grads = [g for group in groups for g in group[1]]
    if clip_val is not None and grads:
        if clip_algorithm == "norm":
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            torch._foreach_mul_(grads, torch.clamp(clip_val / (total + 1e-6), max=1.0))
        else:
            torch._foreach_clamp_min_(grads, -clip_val)
            torch._foreach_clamp_max_(grads, clip_val)
    for group in groups:
        adam_lists_(*group)


class GraphedForward:
    """``fn(x, mask)`` without autograd, replayed as a CUDA graph per input shape.

    The first call of each shape runs eagerly (compiling and warming up), the second
    captures, every later one copies the inputs in and replays. The returned tensor is
    the graph's static output: read or copy it before the next call.

    Args:
        fn: the forward, ``x [B, N, in], mask [B, N] -> [B, N, out]``.
        capture: capture on CUDA (eager everywhere else, or when False).
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], capture: bool = True) -> None:
        self.fn = fn
        self.capture = capture
        self._captured: dict[tuple, tuple[_Captured, Tensor]] = {}

    @torch.no_grad()
    def __call__(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if not (self.capture and x.is_cuda):
            return self.fn(x, mask)
        key = batch_key({"x": x, "mask": mask}, ("x", "mask")) + (torch.is_autocast_enabled("cuda"),)
        if key not in self._captured and len(self._captured) >= MAX_GRAPHS:
            _warn_shapes(len(self._captured))
            with uncached_autocast(x.device):
                return self.fn(x, mask)
        if key not in self._captured:
            self._captured[key] = (_Captured(), x)
            with uncached_autocast(x.device):
                return self.fn(x, mask)
        entry, out = self._captured[key]
        if not entry.graphs:
            entry.inputs = {"x": x.clone(), "mask": None if mask is None else mask.clone()}
            graph = torch.cuda.CUDAGraph()
            torch.cuda.synchronize(x.device)
            with uncached_autocast(x.device), torch.cuda.graph(graph):
                out = self.fn(entry.inputs["x"], entry.inputs["mask"])
            entry.graphs.append(graph)
            self._captured[key] = (entry, out)
        entry.inputs["x"].copy_(x, non_blocking=True)
        if mask is not None:
            entry.inputs["mask"].copy_(mask, non_blocking=True)
        entry.graphs[0].replay()
        return out
