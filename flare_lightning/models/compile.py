"""``torch.compile`` for FLARE models, in place, so checkpoints keep their parameter names.

``torch.compile(model)`` returns a wrapper whose ``state_dict`` keys carry an
``_orig_mod.`` prefix, so its checkpoints do not load into an uncompiled model.
``nn.Module.compile()`` compiles a module's call in place instead: the module, its
parameters and its ``state_dict`` stay the same. We compile the pieces that repeat and
are memory-bound (each block, the lifting and the head), where fusing the MLPs' bias,
activation and residual additions saves passes over [N, C] tensors; the model's own loop
over blocks, with optional activation checkpointing around each, stays in Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

COMPILED_PREFIX = "_orig_mod."


def compile_model(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """Compile ``model``'s blocks, lifting and head in place (a module without them: all of it).

    Args:
        model: a ``FLARE`` (anything with ``blocks``, ``lift``, ``norm_out``, ``head``), or
            any module, compiled whole then.
        compile_kwargs: passed to ``torch.compile`` (``mode``, ``dynamic``, ``fullgraph``...).

    Returns:
        ``model`` itself.
    """
    parts = [getattr(model, name, None) for name in ("lift", "norm_out", "head")]
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        model.compile(**compile_kwargs)
        return model
    for module in [*blocks, *parts]:
        if module is not None:
            module.compile(**compile_kwargs)
    return model


def strip_compiled_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``state_dict`` saved from a ``torch.compile`` wrapper, with ``_orig_mod.`` removed
    from its keys, so that it loads into an uncompiled model."""
    return {key.replace(COMPILED_PREFIX, ""): value for key, value in state_dict.items()}
