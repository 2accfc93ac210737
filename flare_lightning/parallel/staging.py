"""Collectives of CUDA tensors over gloo, staged through host copies made by the caller.

gloo on CUDA tensors stages them itself, in its own worker threads, and on two H200s that
cost ~2.5 ms per small all-reduce and a second CUDA context (~0.5 GB) on GPU 0
(benchmarks/RESULTS.md, ef5b372). Copying to host in the calling thread (whose current
device is the rank's) and reducing CPU tensors keeps gloo off the GPUs entirely: a gloo
context group then costs no device memory, which is what the largest sample needs.
NCCL groups and CPU tensors take the plain collective.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def stages_through_host(x: Tensor, group=None) -> bool:
    """True when ``x`` is on a GPU and ``group`` runs on gloo (a host-side backend)."""
    return x.device.type != "cpu" and dist.get_backend(group) == "gloo"


def all_reduce_(x: Tensor, op=dist.ReduceOp.SUM, group=None, stage: bool | None = None) -> Tensor:
    """In-place all-reduce of contiguous ``x`` over ``group``; staged through a host copy when
    ``stage`` (default: ``stages_through_host``). Returns ``x``."""
    if not (stages_through_host(x, group) if stage is None else stage):
        dist.all_reduce(x, op=op, group=group)
        return x
    host = x.detach().to("cpu", copy=True)  # synchronous: waits for the kernels that made x
    dist.all_reduce(host, op=op, group=group)
    with torch.no_grad():
        x.copy_(host)
    return x


def all_gather_(parts: list[Tensor], x: Tensor, group=None, stage: bool | None = None) -> list[Tensor]:
    """``dist.all_gather`` into ``parts`` (tensors shaped like ``x``), staged through host copies
    as ``all_reduce_``. Returns ``parts``."""
    if not (stages_through_host(x, group) if stage is None else stage):
        dist.all_gather(parts, x.contiguous(), group=group)
        return parts
    host = [torch.empty(x.shape, dtype=x.dtype) for _ in parts]
    dist.all_gather(host, x.detach().to("cpu", copy=True).contiguous(), group=group)
    with torch.no_grad():
        for part, h in zip(parts, host):
            part.copy_(h)
    return parts


def transport(x: Tensor, group=None) -> str:
    """What a collective of ``x`` over ``group`` goes through: ``"gloo-host-copies"`` or the
    group's backend."""
    return "gloo-host-copies" if stages_through_host(x, group) else str(dist.get_backend(group))


def host_staged_allreduce_hook(group, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """DDP communication hook (``DDPStrategy(ddp_comm_hook=...)``, state = the process group or
    None): the bucket's mean over ranks, staged through host like ``all_reduce_``."""
    buffer = bucket.buffer()
    all_reduce_(buffer, group=group)
    buffer.div_(dist.get_world_size(group))
    future: torch.futures.Future[Tensor] = torch.futures.Future()
    future.set_result(buffer)
    return future


__all__ = ["all_gather_", "all_reduce_", "host_staged_allreduce_hook", "stages_through_host", "transport"]
