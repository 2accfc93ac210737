"""Host-staged collectives (gloo groups on GPUs) give the plain collectives' results.

On CPU the staging path (host copy, reduce, copy back) is forced with ``stage=True`` and
compared with the plain collective on the same fresh random inputs, across gloo processes.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from tests.parallel.spawn import run_spawned


def _staged_equals_plain(rank: int, world: int) -> None:
    from flare_lightning.parallel.staging import all_gather_, all_reduce_, stages_through_host

    g = torch.Generator().manual_seed(100 + rank)
    assert not stages_through_host(torch.zeros(1))  # CPU tensors take the plain path
    for op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX, dist.ReduceOp.MIN):
        x = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
        plain, staged = x.clone(), x.clone()
        dist.all_reduce(plain, op=op)
        assert all_reduce_(staged, op, stage=True) is staged
        torch.testing.assert_close(staged, plain, rtol=0, atol=0)
        assert not torch.equal(staged, x)  # something was reduced
    x = torch.randn(2, 4, generator=g)
    plain = [torch.empty_like(x) for _ in range(world)]
    staged = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(plain, x)
    all_gather_(staged, x, stage=True)
    for a, b in zip(staged, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(staged[rank], x, rtol=0, atol=0)


def _hook_equals_default_ddp(rank: int, world: int) -> None:
    from flare_lightning.parallel import staging

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 2)).double()
    plain = nn.parallel.DistributedDataParallel(copy.deepcopy(net))
    hooked = nn.parallel.DistributedDataParallel(copy.deepcopy(net))
    staged_calls = []

    def hook(state, bucket):  # the staged path, forced on CPU
        staged_calls.append(bucket.index())
        return staging.host_staged_allreduce_hook(state, bucket)

    real = staging.all_reduce_
    staging.all_reduce_ = lambda x, op=dist.ReduceOp.SUM, group=None, stage=None: real(x, op, group, stage=True)
    try:
        hooked.register_comm_hook(None, hook)
        g = torch.Generator().manual_seed(7 + rank)  # each rank its own batch
        x, y = torch.randn(9, 6, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g, dtype=torch.float64)
        for model in (plain, hooked):
            nn.functional.mse_loss(model(x), y).backward()
    finally:
        staging.all_reduce_ = real
    assert staged_calls
    for p, q in zip(plain.parameters(), hooked.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-14)
    local = copy.deepcopy(net)
    nn.functional.mse_loss(local(x), y).backward()
    assert not all(torch.allclose(p.grad, q.grad) for p, q in zip(local.parameters(), hooked.parameters()))


def test_staged_collectives_equal_plain_ones():
    run_spawned(_staged_equals_plain, 2)


def test_ddp_hook_equals_default_gradient_mean():
    run_spawned(_hook_equals_default_ddp, 3)


def test_strategy_stages_ddp_buckets_on_gloo_only(monkeypatch):
    """``process_group_backend="gloo"`` gets the host-staged DDP hook (registered by DDPStrategy on
    CUDA only); NCCL and a user's own hook are left alone."""
    from flare_lightning.parallel import ContextParallelStrategy
    from flare_lightning.parallel import strategy as strategy_module
    from flare_lightning.parallel.staging import host_staged_allreduce_hook

    monkeypatch.setattr(strategy_module.DDPStrategy, "setup_distributed", lambda self: None)
    monkeypatch.setattr(strategy_module.ContextGroup, "split_world", classmethod(lambda cls, size: (None, 1, 0)))
    monkeypatch.setattr(ContextParallelStrategy, "world_size", property(lambda self: 2))

    def own_hook(state, bucket):
        raise AssertionError("not called")

    for backend, hook, expected in (("gloo", None, host_staged_allreduce_hook), ("nccl", None, None),
                                    ("gloo", own_hook, own_hook)):
        strategy = ContextParallelStrategy(context_parallel=2, process_group_backend=backend, ddp_comm_hook=hook)
        strategy.setup_distributed()
        assert strategy._ddp_comm_hook is expected
