"""Training batches cross to the GPU on a side stream, overlapping the step still running.

Lightning copies each batch on the compute stream right before its step, so the copy waits for
the previous step's kernels and the next step waits for the copy (at 2^20 points, ~17 MB of
inputs and targets: ~0.7 ms a step at pinned-memory speed). Issued on a stream of its own, the
copy of batch i + 1 runs on the copy engine while step i computes; the compute stream waits only
for that copy's event before using it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor


class SideStreamTransfer:
    """``move(batch)`` run on a side CUDA stream per device; the current stream then waits for it,
    and the moved tensors are marked as used there (so their memory is not reused too early)."""

    def __init__(self) -> None:
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    def __call__(self, move: Callable[[Any], Any], batch: Any, device: torch.device) -> Any:
        if device.type != "cuda":
            return move(batch)
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        current = torch.cuda.current_stream(device)
        with torch.cuda.stream(stream):
            moved = move(batch)
        current.wait_stream(stream)
        apply_to_collection(moved, Tensor, lambda t: t.record_stream(current) if t.is_cuda else None)
        return moved
