"""A training step with no host overhead: the optimizer step replayed as CUDA graphs.

At the paper's sizes (a few thousand points, batch 2) a FLARE step is some 1,700 small
kernels whose launch cost, not their work, sets the step time. ``FastTrainStep`` runs the
forward, the loss, the backward, gradient clipping and the Adam update as one captured CUDA
graph, reading the schedule's learning rate and betas from device tensors written in place
before each replay, so a step costs one graph launch and no host synchronisation.

Split in two graphs (``split``), the step stops between the backward and the update: for the
gradient all-reduce of multi-process training, and for Lightning's gradient hooks (callbacks
reading or changing ``p.grad``), which then see the step's gradients as an eager step shows them.

Off CUDA (or with ``capture=False``) the same sequence runs eagerly, step for step, with the
same update function (``flare_lightning.training.adam_update``): that is what the CPU tests compare
with Lightning's automatic optimization, DDP included.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from flare_lightning.training.adam_update import check_adam, clipped_adam_update_, group_lists, prepare_state
from flare_lightning.training.loss_scale import DeviceLossScale

LossFn = Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]]  # batch -> (losses [B], relative L2 errors [B])
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


def _warn_shapes(count: int, stacklevel: int = 3) -> None:
    """Warn, at the caller of the public method that found it (``stacklevel``), that no more shapes are captured."""
    warnings.warn(
        f"fast_step: {count} batch shapes are captured already; further shapes run eagerly. "
        "Meshes of varying sizes: set data.init_args.pad_to_buckets true",
        stacklevel=stacklevel,
    )


@dataclass
class _Captured:
    """Static inputs, outputs and graphs of one batch shape."""

    seen: int = 0
    inputs: dict[str, Tensor] = field(default_factory=dict)
    flags: dict[str, object] = field(default_factory=dict)
    graphs: list[torch.cuda.CUDAGraph] = field(default_factory=list)  # [whole step] or [forward+backward, update]
    outputs: tuple[Tensor, Tensor] | None = None  # (losses, errors) [B]
    grads: list[Tensor | None] = field(default_factory=list)  # the graph's gradient of each parameter
    with_grad: tuple[tuple[int, ...], ...] = ()  # per param group: indices of the parameters with a gradient
    shared: tuple[bool, ...] = ()  # per param group: the update graph's bias correction uses one step count


class StepCounts:
    """Host copies of the Adam step count of each parameter, per param group, so the update
    knows without reading the device whether the parameters it updates share one count.

    A step that updates a whole group adds one to all of it (a common offset, O(1)); only a
    step that skips parameters (no gradient) changes the counts' pattern."""

    def __init__(self, counts: list[list[int]]) -> None:
        self._counts = counts
        self._uniform = [len(set(c)) <= 1 for c in counts]

    @classmethod
    def of(cls, optimizer: Optimizer) -> StepCounts:
        """The counts of ``optimizer``'s state (one device read per group, when the step is built)."""
        state = optimizer.state
        return cls([torch.stack([state[p]["step"] for p in g["params"]]).long().tolist() if g["params"] else []
                    for g in optimizer.param_groups])

    def shared(self, with_grad: tuple[tuple[int, ...], ...]) -> tuple[bool, ...]:
        """Per group: do the parameters at these indices share one step count?"""
        return tuple(self._uniform[g] if len(idx) == len(c) else len({c[i] for i in idx}) <= 1
                     for g, (c, idx) in enumerate(zip(self._counts, with_grad)))

    def advance(self, with_grad: tuple[tuple[int, ...], ...]) -> None:
        """One update of the parameters at these indices."""
        for g, (c, idx) in enumerate(zip(self._counts, with_grad)):
            if len(idx) == len(c):
                continue  # everyone advances: differences stay as they are
            for i in idx:
                c[i] += 1
            self._uniform[g] = len(set(c)) <= 1


class FastTrainStep:
    """Forward, backward, gradient all-reduce, clipping and Adam/AdamW update of one batch.

    A step is ``forward_backward(batch)``, then ``backward()``, ``unscale()`` and ``update()``
    (Lightning's ``training_step``, ``backward`` and ``optimizer_step``); ``step(batch)`` runs them
    all. Unsplit, ``forward_backward`` runs the whole step and the others do nothing.

    Args:
        loss_fn: maps a batch (``x``, ``y``, ``mask``) to per-sample losses and relative L2
            errors [B]; the step minimises the losses' mean.
        optimizer: ``torch.optim.Adam`` or ``AdamW`` (``check_adam``); its state is completed
            on the parameters' device, and its groups' lr, betas, weight decay and eps apply.
        clip_val: gradient clipping threshold (None or 0: off).
        clip_algorithm: ``norm`` (total 2-norm, as Lightning's default) or ``value``.
        capture: replay the step as CUDA graphs (needs CUDA parameters).
        warmup_steps: eager steps per batch shape before it is captured (compilation, library
            handles and the allocator's pools are made in these).
        split: stop between backward and update (always under multi-process training).
        world_size: processes whose gradients are averaged (None: torch.distributed's).
        all_reduce: sums a flat gradient buffer over processes in place (torch.distributed's
            ``all_reduce`` unless given, e.g. by a test that fakes ranks on one GPU).
        loss_scale: fp16's dynamic loss scale (``16-mixed``): backward runs on the scaled loss,
            the gradients are unscaled (after the all-reduce, before gradient hooks and clipping,
            as Lightning's GradScaler does it) and a step whose gradients overflowed changes
            nothing but the scale, decided on the device.
    """

    def __init__(
        self,
        loss_fn: LossFn,
        optimizer: Optimizer,
        clip_val: float | None = None,
        clip_algorithm: str = "norm",
        capture: bool = True,
        warmup_steps: int = 3,
        split: bool = False,
        world_size: int | None = None,
        all_reduce: Callable[[Tensor], Any] | None = None,
        loss_scale: DeviceLossScale | None = None,
    ) -> None:
        if clip_algorithm not in ("norm", "value"):
            raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value', got {clip_algorithm!r}")
        check_adam(optimizer)
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if not self.params:
            raise ValueError("FastTrainStep: no parameter requires a gradient")
        self.clip_val = clip_val or None
        self.clip_algorithm = clip_algorithm
        self.device = self.params[0].device
        self.capture = capture and self.device.type == "cuda"
        self.warmup_steps = max(1, warmup_steps)
        if world_size is None:
            world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.world_size = world_size
        self.all_reduce = all_reduce or dist.all_reduce
        self.split = split or world_size > 1
        self.loss_scale = loss_scale
        prepare_state(optimizer, self.device, capturable=self.capture)
        self.counts = StepCounts.of(optimizer)
        # (lr, beta1, beta2) per group as device tensors the update reads (in the parameters'
        # precision, float32 at least); weight decay and eps are constants of the captured update.
        dtype = torch.promote_types(self.params[0].dtype, torch.float32)
        self._hparams = [tuple(torch.zeros((), dtype=dtype, device=self.device) for _ in range(3))
                         for _ in optimizer.param_groups]
        self._constants = [self._group_constants(group) for group in optimizer.param_groups]
        self._captured: dict[tuple, _Captured] = {}
        self._entry: _Captured | None = None  # split: the graphs of the step in flight (None: eager)
        self._pending: list[Tensor | None] = []  # split: the step's gradients until ``backward``
        # LR schedulers warn when they step before the optimizer ever did. torch's own step on
        # no gradients changes nothing, and records that the optimizer has stepped (torch would
        # warn that a capturable optimizer steps outside a graph: this once it does, on purpose).
        optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            optimizer.step()

    # --- the three parts of a step ------------------------------------------------------
    def forward_backward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Forward and backward of ``batch`` (unsplit: the whole step). Returns the per-sample
        losses and relative L2 errors [B]; replayed, these are the graph's static outputs,
        valid until the next step."""
        if not self.split:
            self._write_hparams()
        entry = self._graph_entry(batch)
        if entry is None:
            return self._eagerly(self._eager_forward_backward, batch)
        if entry.graphs and not self.split and entry.shared != self.counts.shared(entry.with_grad):
            entry.graphs.clear()  # a parameter's count fell behind: recapture with its own bias correction
        if not entry.graphs:
            self._capture(entry, batch)
        for name, t in entry.inputs.items():
            t.copy_(batch[name], non_blocking=True)
        entry.graphs[0].replay()
        if self.split:
            self._entry, self._pending = entry, entry.grads
            self._hide_grads()
        else:
            self.counts.advance(entry.with_grad)
        return entry.outputs

    def backward(self) -> None:
        """Split steps: average the step's gradients over processes and hand them to Python
        code as ``p.grad`` (in place edits reach the update; replacing a tensor is refused)."""
        if not self.split:
            return
        grads = self._pending
        if self.world_size > 1:
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
            self._average(grads)
        for p, g in zip(self.params, grads):
            p.grad = g

    def unscale(self) -> None:
        """Split steps with a loss scale: the gradients ``backward`` handed over to their true
        size, and the step's overflow flag set (a few kernels, no host read)."""
        if self.split and self.loss_scale is not None:
            self.loss_scale.unscale_([p.grad for p in self.params if p.grad is not None])

    def update(self) -> None:
        """Split steps: gradient clipping and the Adam update, after ``backward`` and ``unscale``."""
        if not self.split:
            return
        self._write_hparams()
        entry, self._entry = self._entry, None
        if entry is None:
            self._eagerly(self._eager_update)
            return
        if any(p.grad is not g for p, g in zip(self.params, entry.grads)):
            raise RuntimeError(
                "fast_step: a gradient hook replaced a parameter's .grad tensor; the captured update reads "
                "the graph's own gradient tensors, so hooks must change gradients in place (p.grad.mul_(...))"
            )
        shared = self.counts.shared(entry.with_grad)
        if len(entry.graphs) < 2 or entry.shared != shared:
            self._capture_update(entry, shared)
        entry.graphs[1].replay()
        self.counts.advance(entry.with_grad)

    def step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """One whole optimizer step on ``batch`` (``x`` [B, N, in], ``y`` [B, N, out], ``mask`` [B, N])."""
        out = self.forward_backward(batch)
        self.backward()
        self.unscale()
        self.update()
        return out

    __call__ = step

    def release_graphs(self) -> None:
        """Forget captured graphs (parameters moved or were replaced); later steps recapture."""
        self._captured.clear()
        self._entry = None

    # --- eager steps ----------------------------------------------------------------------
    def _ops_forward_backward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        with uncached_autocast(self.device):
            losses, errors = self.loss_fn(batch)
        loss = losses.mean()
        (loss if self.loss_scale is None else self.loss_scale.scale_loss(loss)).backward()
        return losses.detach(), errors.detach()

    def _eager_forward_backward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        out = self._ops_forward_backward(batch)
        if self.split:
            self._entry, self._pending = None, [p.grad for p in self.params]
            self._hide_grads()
        else:
            self._eager_update()
        return out

    def _eager_update(self) -> None:
        with_grad = self._with_grad()
        self._ops_update(self.counts.shared(with_grad))
        self.counts.advance(with_grad)

    def _eagerly(self, fn: Callable, *args: Any) -> Any:
        """``fn`` now, on a side stream when capturing (warm-up steps must not run on the
        stream a capture later uses); results come back as tensors of the current stream."""
        if not self.capture:
            return fn(*args)
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            out = fn(*args)
        current.wait_stream(side)
        return None if out is None else tuple(t.clone() for t in out)

    # --- the update -----------------------------------------------------------------------
    def _ops_update(self, shared: tuple[bool, ...]) -> None:
        """Clipping and Adam/AdamW on the parameters' ``.grad`` (eager, or recorded into a graph);
        with a loss scale, the unscaling first (unsplit: split steps ran ``unscale``), the overflow
        check's skip applied and the scale's update after."""
        adamw = isinstance(self.optimizer, torch.optim.AdamW)
        groups = [group_lists(group, self.optimizer.state, *hparams, bool(group.get("decoupled_weight_decay", adamw)),
                              shared_step=flag)
                  for group, hparams, flag in zip(self.optimizer.param_groups, self._hparams, shared)]
        scale = self.loss_scale
        if scale is not None and not self.split:
            scale.unscale_([g for group in groups for g in group[1]])
        clipped_adam_update_(groups, self.clip_val, self.clip_algorithm, skip=None if scale is None else scale.skip)
        if scale is not None:
            scale.update_()

    def _with_grad(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(i for i, p in enumerate(group["params"]) if p.grad is not None)
                     for group in self.optimizer.param_groups)

    def _average(self, grads: list[Tensor]) -> None:
        """Mean of the gradients over processes, in one collective (Lightning's DDP reducer
        is kept out of the fast step: it cannot follow a replayed backward)."""
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.all_reduce(flat)
        flat.div_(self.world_size)
        torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)])

    @staticmethod
    def _group_constants(group: dict) -> tuple[float, float]:
        return float(group["weight_decay"]), float(group["eps"])

    def _write_hparams(self) -> None:
        """Copy the schedule's current values into the tensors the update reads."""
        for i, (group, (lr, beta1, beta2)) in enumerate(zip(self.optimizer.param_groups, self._hparams)):
            if self._group_constants(group) != self._constants[i]:
                raise ValueError(
                    f"fast_step: param group {i}'s weight_decay/eps changed during training "
                    f"({self._constants[i]} -> {self._group_constants(group)}); the captured update reads "
                    "them once: schedule only lr and betas with model.fast_step"
                )
            lr.fill_(group["lr"])
            beta1.fill_(group["betas"][0])
            beta2.fill_(group["betas"][1])

    def _hide_grads(self) -> None:
        # Between Lightning's training_step and backward, zero_grad may run: it must not touch
        # the step's gradients (a graph's are static buffers).
        for p in self.params:
            p.grad = None

    # --- CUDA graphs ----------------------------------------------------------------------
    def _graph_entry(self, batch: dict[str, Tensor]) -> _Captured | None:
        """The graphs for ``batch``'s shape, or None to run this step eagerly (no capture,
        the shape's warm-up steps, or more shapes than ``MAX_GRAPHS``)."""
        if not self.capture:
            return None
        key = batch_key(batch)
        if key not in self._captured and len(self._captured) >= MAX_GRAPHS:
            _warn_shapes(len(self._captured))
            return None
        entry = self._captured.setdefault(key, _Captured())
        if entry.seen < self.warmup_steps:
            entry.seen += 1
            return None
        return entry

    def _capture(self, entry: _Captured, batch: dict[str, Tensor]) -> None:
        entry.inputs = {name: batch[name].clone() for name in TRAIN_KEYS}
        entry.flags = {name: batch[name] for name in FLAG_KEYS if name in batch}
        self.optimizer.zero_grad(set_to_none=True)  # backward allocates grads in the graph's pool
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            entry.outputs = self._ops_forward_backward(entry.inputs | entry.flags)
            entry.with_grad = self._with_grad()
            if not self.split:
                entry.shared = self.counts.shared(entry.with_grad)
                self._ops_update(entry.shared)
        entry.graphs = [graph]
        entry.grads = [p.grad for p in self.params]
        if self.split:
            if self.world_size > 1:  # every rank reduces (and updates) the same list
                entry.grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, entry.grads)]
                for p, g in zip(self.params, entry.grads):
                    p.grad = g
                entry.with_grad = self._with_grad()
            self._capture_update(entry, self.counts.shared(entry.with_grad))
        # Graph-owned gradients are overwritten by every replay: hide them from Python code.
        self._hide_grads()

    def _capture_update(self, entry: _Captured, shared: tuple[bool, ...]) -> None:
        """(Re)capture the update graph of a split step, reading the graph's gradients."""
        for p, g in zip(self.params, entry.grads):
            p.grad = g
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._ops_update(shared)
        entry.graphs[1:] = [graph]
        entry.shared = shared


class GraphedForward:
    """``fn(x, mask)`` without autograd, replayed as a CUDA graph per input shape.

    The first call of each shape runs eagerly (compiling and warming up), the second
    captures, every later one copies the inputs in and replays. The returned tensor is
    the graph's static output: read or copy it before the next call (of any shape: the
    graphs share one memory pool, so evaluation memory is that of the largest shape, not
    the sum over shapes, e.g. the 1M config's full-resolution validation runs).

    Args:
        fn: the forward, ``x [B, N, in], mask [B, N] -> [B, N, out]``.
        capture: capture on CUDA (eager everywhere else, or when False).
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], capture: bool = True) -> None:
        self.fn = fn
        self.capture = capture
        self._captured: dict[tuple, tuple[_Captured, Tensor | None]] = {}  # shape -> graph, static output
        self._seen_once: set[tuple] = set()  # shapes run once, eagerly: captured if they come again
        self._pool = None  # one pool for every shape's graph: replays never overlap

    @torch.no_grad()
    def __call__(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if not (self.capture and x.is_cuda):
            return self.fn(x, mask)
        key = batch_key({"x": x, "mask": mask}, ("x", "mask")) + (torch.is_autocast_enabled("cuda"),)
        if key not in self._captured and not self._admit(key):
            with uncached_autocast(x.device):
                return self.fn(x, mask)
        entry, out = self._captured[key]
        if not entry.graphs:
            out = self._capture(key, entry, x, mask)
        entry.inputs["x"].copy_(x, non_blocking=True)
        if mask is not None:
            entry.inputs["mask"].copy_(mask, non_blocking=True)
        entry.graphs[0].replay()
        return out

    def _admit(self, key: tuple) -> bool:
        """Whether a shape without a graph gets one now. A shape seen once runs eagerly and nothing of
        it is kept (holding x would keep a test run's input alive); only shapes that come again are
        captured, and only those count toward ``MAX_GRAPHS`` (beyond it: eager, with a warning)."""
        if key in self._seen_once and len(self._captured) < MAX_GRAPHS:
            self._seen_once.discard(key)
            self._captured[key] = (_Captured(), None)
            return True
        if key in self._seen_once:
            _warn_shapes(len(self._captured), stacklevel=4)
        self._seen_once.add(key)
        return False

    def _capture(self, key: tuple, entry: _Captured, x: Tensor, mask: Tensor | None) -> Tensor:
        """Record ``fn`` on static copies of this shape's inputs; returns the graph's static output."""
        entry.inputs = {"x": x.clone(), "mask": None if mask is None else mask.clone()}
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(x.device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with uncached_autocast(x.device), torch.cuda.graph(graph, pool=self._pool):
            out = self.fn(entry.inputs["x"], entry.inputs["mask"])
        entry.graphs.append(graph)
        self._captured[key] = (entry, out)
        return out
