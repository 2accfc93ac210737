"""The device memory a run holds, CUDA graphs included.

A captured step's intermediates live in its graph's private memory pool: freed when the capture
ends, they are not counted by ``torch.cuda.memory_allocated``, yet every replay writes them. So an
epoch of replays reports a peak of the inputs and weights alone (1.2 GB for the 1M config, whose step
holds ~21 GB). ``peak_memory_bytes`` counts the pools' unallocated bytes on top of the live tensors.
Not on top of the allocator's peak: during a capture the graph's intermediates are allocations (in
that peak) and afterwards the pool's free bytes, so adding the two counted them twice (42.4 GB for the
1M config's first epoch at 77fe692, whose later epochs hold 23.6 GB).
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
    """Peak device memory since the last ``torch.cuda.reset_peak_memory_stats`` (0 off CUDA): the larger
    of the allocator's peak of live tensors and the live tensors now plus what the CUDA graphs' pools
    hold besides them (pools only grow). Exact for eager runs, captures and replays; where eager
    work allocates beside existing pools (an uncaptured evaluation after a captured step), a lower
    bound short of the smaller of the two."""
    if device.type != "cuda":
        return 0
    return max(torch.cuda.max_memory_allocated(device), torch.cuda.memory_allocated(device) + graph_pool_bytes(device))
