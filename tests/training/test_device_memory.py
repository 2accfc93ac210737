"""Peak device memory counts what CUDA graphs hold: the pools' memory that no live tensor owns,
which replays write but the allocator's counters leave out."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.training.device_memory import graph_pool_bytes, peak_memory_bytes

MIB = 2**20


def segment(device: int, pool: tuple[int, int], total: int, allocated: int) -> dict:
    return {"device": device, "segment_pool_id": pool, "total_size": total * MIB, "allocated_size": allocated * MIB}


def test_graph_pools_count_their_unallocated_bytes_on_their_device_only(monkeypatch):
    segments = [segment(0, (0, 0), 500, 100),  # the default pool: its free cache is not in use
                segment(0, (0, 1), 300, 20),   # a graph pool on device 0: 280 MiB only replays use
                segment(0, (0, 2), 64, 64),    # another graph's pool, all of it live tensors (counted as allocated)
                segment(1, (0, 1), 900, 0)]    # a pool on another device
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_snapshot", lambda: segments)
    assert graph_pool_bytes(torch.device("cuda", 0)) == 280 * MIB
    assert graph_pool_bytes(torch.device("cuda", 1)) == 900 * MIB
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 700 * MIB)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 900 * MIB)
    assert peak_memory_bytes(torch.device("cuda", 0)) == 980 * MIB  # replays: live tensors + the pools
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 1000 * MIB)
    assert peak_memory_bytes(torch.device("cuda", 0)) == 1000 * MIB  # eager work above that


def test_a_capture_is_not_counted_twice(monkeypatch):
    """A capture's intermediates are allocations while it runs (in the allocator's peak) and the pool's
    free bytes after it: the first epoch of the 1M config holds 23.6 GB, not 23.2 + 22.4."""
    gb = 10**9
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_snapshot", lambda: [segment(0, (0, 1), 22_400, 0)])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: int(1.2 * gb))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: int(23.2 * gb))  # during the capture
    assert peak_memory_bytes(torch.device("cuda", 0)) == max(int(23.2 * gb), int(1.2 * gb) + 22_400 * MIB)


def test_nothing_off_cuda_or_before_cuda_starts(monkeypatch):
    def no_snapshot():
        raise AssertionError("read the allocator of a device that was never used")

    monkeypatch.setattr(torch.cuda, "memory_snapshot", no_snapshot)
    assert graph_pool_bytes(torch.device("cpu")) == 0 == peak_memory_bytes(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert graph_pool_bytes(torch.device("cuda", 0)) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_replayed_graphs_intermediates_count_in_the_peak():
    device = torch.device("cuda")
    x = torch.randn(4096, 64, device=device)
    weight = torch.randn(64, 4096, device=device)  # the intermediate: 4096 x 4096 fp32, 64 MiB

    def fn():
        return (x @ weight).relu().sum(1)

    fn()  # warm-up (cuBLAS workspace, lazy init)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    graph.replay()
    torch.testing.assert_close(out, fn())
    hidden = 4096 * 4096 * 4
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated() < hidden // 2  # the allocator sees no intermediate
    assert peak_memory_bytes(device) - torch.cuda.memory_allocated() >= hidden  # the pool holds it
