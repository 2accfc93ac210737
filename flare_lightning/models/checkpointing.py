"""Activation checkpointing and point-chunked application of pointwise layers.

FLARE's activation memory is dominated by its pointwise MLPs (K, V, feed-forward, lift and
head): each keeps about ten [N, C] tensors for backward. Two tools bound it:

- ``checkpointed(fn, *args)`` keeps only ``fn``'s inputs and recomputes its insides in
  backward (one extra forward of ``fn``);
- ``apply_in_chunks(fn, x, chunk)`` runs ``fn`` on ``chunk`` points at a time and, when
  autograd records, checkpoints each chunk, so what an MLP holds for backward is its input
  and output, and its hidden activations exist for one chunk at a time, in forward and in
  backward alike.

Both are exact: recomputation repeats the same operations on the same inputs. The model
has no randomness (no dropout), so RNG state is not saved per call (saving the CUDA RNG
state costs a device synchronisation each time).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def checkpointed(fn: Callable[..., Tensor], *args, enabled: bool = True) -> Tensor:
    """``fn(*args)``, recomputed in backward instead of storing its activations when
    ``enabled`` and autograd is recording; a plain call otherwise."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
    return fn(*args)


def apply_in_chunks(fn: Callable[[Tensor], Tensor], x: Tensor, chunk_size: int, dim: int = -2) -> Tensor:
    """``fn`` (pointwise along ``dim``) applied ``chunk_size`` points at a time.

    x: [..., N, C_in] -> [..., N, C_out]. Each chunk is checkpointed while autograd records,
    so the activations inside ``fn`` never exist for more than one chunk.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if x.shape[dim] <= chunk_size:
        return checkpointed(fn, x)
    return torch.cat([checkpointed(fn, part) for part in x.split(chunk_size, dim)], dim)
