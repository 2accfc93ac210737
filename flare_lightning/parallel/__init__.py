"""Context parallelism: one sample's points split over the ranks of a group, exactly."""

from flare_lightning.parallel.context import ContextGroup
from flare_lightning.parallel.hooks import attach_context, context_of, detach_context, local_forward
from flare_lightning.parallel.loss import relative_l2_sharded
from flare_lightning.parallel.strategy import ContextParallelStrategy

__all__ = [
    "ContextGroup",
    "ContextParallelStrategy",
    "attach_context",
    "context_of",
    "detach_context",
    "local_forward",
    "relative_l2_sharded",
]
