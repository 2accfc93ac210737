"""Make a FLARE model context-parallel in place: shard its inputs, join its outputs and
route its mixers through the group, without changing its parameters or state dict."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from flare_lightning.models.attention import FlareAttention
from flare_lightning.parallel.context import ContextGroup

_HANDLES = "_context_parallel_hooks"


def attach_context(model: nn.Module, context: ContextGroup, whole_samples: bool = True) -> None:
    """Run ``model(x [B, N, C], mask [B, N])`` context-parallel: each rank computes on its
    share of the points and the output [B, N, out] is the whole sample's on every rank.

    With ``whole_samples=False`` the model takes and returns this rank's share only
    ([B, L, C] -> [B, L, out], see ``ContextGroup.shard``): nothing per point is held for
    the whole sample; the loss then needs sums over the group (``relative_l2_sharded``).
    Idempotent: a model already attached to ``context`` is left as it is.
    """
    layers = [m for m in model.modules() if isinstance(m, FlareAttention)]
    if not layers:
        raise ValueError(f"context parallelism needs FlareAttention layers; {type(model).__name__} has none")
    current = getattr(model, _HANDLES, None)
    if current is not None:
        if current[0] is context:
            return
        detach_context(model)
    for layer in layers:
        layer.context = context
    if not whole_samples:
        setattr(model, _HANDLES, (context, ()))
        return

    lengths: list[int] = []  # points per sample of the calls in flight (pre-hook -> hook)

    def shard(module, args, kwargs):
        if not context.enabled:
            return None
        x, rest = args[0], args[1:]
        lengths.append(x.shape[1])
        mask = rest[0] if rest else kwargs.pop("mask", None)
        x, mask = context.shard(x, mask)
        return (x, mask, *rest[1:]), kwargs

    def unshard(module, args, kwargs, output):
        return context.unshard(output, lengths.pop()) if context.enabled else None

    handles = (
        model.register_forward_pre_hook(shard, with_kwargs=True),
        model.register_forward_hook(unshard, with_kwargs=True),
    )
    setattr(model, _HANDLES, (context, handles))


def detach_context(model: nn.Module) -> None:
    """Undo ``attach_context``: the model runs on one rank's whole samples again."""
    current = getattr(model, _HANDLES, None)
    if current is None:
        return
    for handle in current[1]:
        handle.remove()
    for m in model.modules():
        if isinstance(m, FlareAttention):
            m.context = None
    delattr(model, _HANDLES)


def context_of(model: nn.Module) -> ContextGroup | None:
    """The context group ``model`` (or a submodule of it) is attached to, if any."""
    for m in model.modules():
        current = getattr(m, _HANDLES, None)
        if current is not None:
            return current[0]
    return None


@contextmanager
def local_forward(model: nn.Module) -> Iterator[None]:
    """Within this block the model runs on this rank alone, on whole samples (for work that
    one rank does by itself, such as analysis callbacks on rank 0)."""
    context = context_of(model)
    if context is None:
        yield
        return
    before, context.enabled = context.enabled, False
    try:
        yield
    finally:
        context.enabled = before
