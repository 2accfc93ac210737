"""The device memory a run holds, CUDA graphs included.

A captured step's intermediates live in its graph's private memory pool: freed when the capture
ends, they are not counted by ``torch.cuda.memory_allocated``, yet every replay writes them. So an
epoch of replays reports a peak of the inputs and weights alone (1.2 GB for the 1M config, whose step
holds ~21 GB). ``peak_memory_bytes`` adds the pools' unallocated bytes to the allocator's peak.
"""

from __future__ import annotations

import torch


def graph_pool_bytes(device: torch.device) -> int:
    """Bytes of the allocator's private pools (CUDA graphs) on ``device`` that no live tensor holds:
    memory the graphs' replays use that the allocator's counters leave out (0 off CUDA)."""
    if device.type != "cuda" or not torch.cuda.is_initialized():
        return 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    free = 0
    for segment in torch.cuda.memory_snapshot():
        pool = tuple(segment.get("segment_pool_id", (0, 0)))
        if segment.get("device", index) == index and pool != (0, 0):
            free += segment["total_size"] - segment["allocated_size"]
    return free


def peak_memory_bytes(device: torch.device) -> int:
    """Peak device memory since the last ``torch.cuda.reset_peak_memory_stats``: the allocator's peak
    of live tensors plus what the CUDA graphs' pools hold besides them (0 off CUDA)."""
    if device.type != "cuda":
        return 0
    return torch.cuda.max_memory_allocated(device) + graph_pool_bytes(device)
