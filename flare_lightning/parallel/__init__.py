"""Context parallelism: one sample's points split over the ranks of a group, exactly."""

from flare_lightning.parallel.context import ContextGroup
from flare_lightning.parallel.hooks import attach_context, context_of, detach_context, local_forward

__all__ = ["ContextGroup", "attach_context", "context_of", "detach_context", "local_forward"]
