"""The shared-memory exchange of one host's ranks gives gloo's results, bit for bit.

Run across forked gloo processes on fresh random inputs: all-reduce (sum, product, max,
min; host and on-device reduction), all-gather, tensors larger than a slot, many
exchanges in a row (slot reuse), the context-parallel model through it, the fallback to
gloo when ranks span hosts, and the error of a rank that never arrives.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.parallel import workers
from tests.parallel.spawn import run_spawned
from tests.parallel.test_context_exact import TORCH_CASES

OPS = (dist.ReduceOp.SUM, dist.ReduceOp.PRODUCT, dist.ReduceOp.MAX, dist.ReduceOp.MIN)


def _small_slots(monkeypatch_slot: int):
    from flare_lightning.parallel import host_exchange

    host_exchange.SLOT_BYTES = monkeypatch_slot  # a forked worker: the change dies with it


def _matches_gloo(rank: int, world: int) -> None:
    from flare_lightning.parallel.host_exchange import exchange_for

    _small_slots(256)  # 64 floats: most tensors below go through in several pieces
    ex = exchange_for(None)
    assert ex is not None and ex.slot_bytes == 256
    g = torch.Generator().manual_seed(10 + rank)
    for step in range(40):  # many exchanges in a row: both slot parities reused often
        op = OPS[step % len(OPS)]
        shape = [(3, 5, 7), (1,), (200,), (0,), (65, 2)][step % 5]
        dtype = torch.float64 if step % 3 else torch.float32
        x = torch.randn(*shape, generator=g, dtype=dtype)
        inputs = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(inputs, x)
        folded = inputs[0].clone()  # the reduction in rank order: the same bits on every rank
        for other in inputs[1:]:
            folded = {dist.ReduceOp.SUM: torch.add, dist.ReduceOp.PRODUCT: torch.mul,
                      dist.ReduceOp.MAX: torch.maximum, dist.ReduceOp.MIN: torch.minimum}[op](folded, other)
        plain, host, device = x.clone(), x.clone(), x.clone()
        dist.all_reduce(plain, op=op)  # gloo's own order of summation may differ in the last bit
        assert ex.all_reduce_(host, op) is host
        ex.all_reduce_(device, op, on_device=True)
        torch.testing.assert_close(host, folded, rtol=0, atol=0)
        torch.testing.assert_close(device, folded, rtol=0, atol=0)
        torch.testing.assert_close(host, plain)
        n = torch.randint(0, 300, (1,), generator=torch.Generator().manual_seed(step)).item()  # same on every rank
        y = torch.randint(-9, 9, (n, 2), generator=g, dtype=torch.int32)
        plain_parts = [torch.empty_like(y) for _ in range(world)]
        parts = [torch.full_like(y, 99) for _ in range(world)]
        dist.all_gather(plain_parts, y)
        ex.all_gather_(parts, y)
        for a, b in zip(parts, plain_parts):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _staged_model_exact(rank: int, world: int, cases) -> None:
    """The context-parallel model with every collective forced through the exchange."""
    from flare_lightning.parallel import host_exchange, staging

    staging.stages_through_host = lambda x, group=None: True
    used = []
    real = host_exchange.HostExchange.exchange
    host_exchange.HostExchange.exchange = lambda self, x, tag="exchange": used.append(1) or real(self, x, tag)
    workers.model_exact(rank, world, cases)
    assert len(used) > 10


def _spans_hosts(rank: int, world: int) -> None:
    from flare_lightning.parallel import host_exchange, staging

    host_exchange.socket.gethostname = lambda: f"node{rank}"
    assert host_exchange.exchange_for(None) is None
    x = torch.full((4,), float(rank + 1), dtype=torch.float64)
    staging.all_reduce_(x, stage=True)  # gloo on host copies instead
    torch.testing.assert_close(x, torch.full((4,), world * (world + 1) / 2, dtype=torch.float64))


def _separate_shm(rank: int, world: int) -> None:
    """Same host name, but rank 1 cannot see rank 0's /dev/shm (as in two containers)."""
    import builtins

    from flare_lightning.parallel import host_exchange, staging

    real_open = builtins.open
    if rank == 1:
        def no_shm(path, *args, **kwargs):
            if str(path).startswith("/dev/shm/flare_exchange_"):
                raise FileNotFoundError(path)
            return real_open(path, *args, **kwargs)
        builtins.open = no_shm
    assert host_exchange.exchange_for(None) is None  # on every rank, so all take gloo
    x = torch.full((3,), float(rank + 1))
    staging.all_reduce_(x, stage=True)
    torch.testing.assert_close(x, torch.full((3,), 3.0))


def _late_rank(rank: int, world: int) -> None:
    from flare_lightning.parallel import host_exchange

    ex = host_exchange.exchange_for(None)
    host_exchange.TIMEOUT_S, host_exchange.SPINS = 0.3, 10
    if rank == 0:
        with pytest.raises(RuntimeError, match=r"ranks \[1\] of the group did not reach exchange 1"):
            ex.all_reduce_(torch.ones(3))
    dist.barrier()


def _mismatched_collectives(rank: int, world: int) -> None:
    from flare_lightning.parallel.host_exchange import exchange_for

    ex = exchange_for(None)
    for first, second in (("sum", "gather"), ("sum", "longer sum")):
        with pytest.raises(RuntimeError, match="ranks .* sent another collective or size: the ranks took different"):
            if rank == 0 or first == second:
                ex.all_reduce_(torch.ones(3))
            elif second == "gather":
                ex.all_gather_([torch.empty(3) for _ in range(world)], torch.ones(3))
            else:
                ex.all_reduce_(torch.ones(4))
    x = torch.full((2,), float(rank))  # the exchange still works after the errors
    ex.all_reduce_(x)
    torch.testing.assert_close(x, torch.full((2,), float(world * (world - 1) / 2)))


def test_exchange_equals_gloo_collectives():
    run_spawned(_matches_gloo, 3)


def test_context_parallel_model_through_the_exchange():
    run_spawned(_staged_model_exact, 2, TORCH_CASES[:2])


def test_ranks_on_different_collectives_get_an_error():
    run_spawned(_mismatched_collectives, 2)


def test_ranks_on_several_hosts_fall_back_to_gloo():
    run_spawned(_spans_hosts, 2)


def test_ranks_that_cannot_share_dev_shm_fall_back_to_gloo():
    run_spawned(_separate_shm, 2)


def test_a_rank_that_never_arrives_is_named():
    run_spawned(_late_rank, 2)


def _refuses_strided(rank: int, world: int) -> None:
    from flare_lightning.parallel.host_exchange import exchange_for

    ex = exchange_for(None)
    with pytest.raises(ValueError, match="must be contiguous"):
        ex.all_reduce_(torch.ones(4, 3).t())  # a result written into a copy would be lost
    with pytest.raises(ValueError, match="must be contiguous"):
        ex.all_gather_([torch.empty(3, 4).t() for _ in range(world)], torch.ones(4, 3))


def test_strided_tensors_are_refused():
    run_spawned(_refuses_strided, 2)


def test_switched_off_by_environment(monkeypatch):
    from flare_lightning.parallel import host_exchange

    assert host_exchange.supported(dist.ReduceOp.SUM) == (host_exchange.platform.machine() in ("x86_64", "AMD64"))
    assert not host_exchange.supported(dist.ReduceOp.BAND)  # no such reduction here: gloo does it
    monkeypatch.setenv("FLARE_HOST_EXCHANGE", "0")
    assert not host_exchange.supported(dist.ReduceOp.SUM)
