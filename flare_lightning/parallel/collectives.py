"""Collectives of context parallelism with exact gradients.

Every rank of a context group holds a share of the same samples' points, and the group
minimises the sum of the ranks' losses. A value built from a sum over ranks
(``all_reduce_sum``) or copied to every rank (``gather_shares``) therefore receives, in
backward, the sum over ranks of the gradients that flow into it: that is the adjoint of
the sum, and it is what keeps every rank's parameter gradient an exact share of the
gradient of the whole sample (see docs/scaling.md for the normalisation under DDP).
On a gloo group, CUDA tensors go through host copies (``staging``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from flare_lightning.kernels.mixer_math import EncodeStats, merge_normalised, merge_stats
from flare_lightning.parallel.staging import all_gather_, all_reduce_


class _AllReduceSum(torch.autograd.Function):
    """y = Σ_ranks x; the gradient of x is Σ_ranks of the gradients of y."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        y = x.clone(memory_format=torch.contiguous_format)  # one copy: the all-reduce is in place
        all_reduce_(y, dist.ReduceOp.SUM, group)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)
        all_reduce_(grad, dist.ReduceOp.SUM, ctx.group)
        return grad, None


def all_reduce_sum(x: Tensor, group) -> Tensor:
    """Sum of ``x`` over the ranks of ``group``, differentiable (see the module docstring)."""
    return _AllReduceSum.apply(x, group)


@torch.no_grad()
def all_reduce_max(x: Tensor, group) -> Tensor:
    """Elementwise max of ``x`` over ``group``; no gradient (used for log-sum-exp shifts,
    which cancel out of every result)."""
    y = x.detach().clone(memory_format=torch.contiguous_format)
    all_reduce_(y, dist.ReduceOp.MAX, group)
    return y


def gather_stacked(x: Tensor, group) -> Tensor:
    """Every rank's ``x`` stacked in rank order, [G, *x.shape], on every rank; no gradient."""
    return torch.stack(all_gather_([torch.empty_like(x) for _ in range(dist.get_world_size(group))], x, group))


@torch.no_grad()
def merge_encode_stats(stats: EncodeStats, group) -> EncodeStats:
    """Join every rank's encode statistics (natural log base) into the whole sample's, for the
    chunked evaluation (no gradient): one all-gather of ``[m, l, acc]`` packed as
    [B, H, M, D + 2], then every rank merges the same parts in rank order (one collective where
    a max all-reduce and a sum all-reduce take two). Ranks without real points (max = -inf)
    contribute nothing."""
    m, l, acc = stats
    parts = gather_stacked(torch.cat([m[..., None], l[..., None], acc], dim=-1), group)  # [G, B, H, M, D+2]
    return merge_stats((parts[..., 0], parts[..., 1], parts[..., 2:]))


def merge_latents_lse2(z: Tensor, lse: Tensor, group) -> tuple[Tensor, Tensor]:
    """Join per-rank latent summaries z [B·H, M, D] with their base-2 log-sum-exp
    lse [B·H, M] (the Triton encode's fp32 outputs) into the whole sample's (z, lse).

    One all-gather of ``[lse, z]`` (G x [B·H, M, D+1]), then every rank merges the same
    parts in rank order: one collective per block where a max all-reduce followed by a sum
    all-reduce takes two, on a path where each collective waits on the GPU (forward)."""
    parts = gather_stacked(torch.cat([lse[..., None], z], dim=-1), group)  # [G, B·H, M, D+1]
    z, lse = merge_normalised(parts[..., 0], parts[..., 1:])  # a rank without real points has weight 0
    return z.contiguous(), lse  # the kernels index z as dense [B·H, M, D]


class _GatherShares(torch.autograd.Function):
    """[B, L, C] per rank -> [B, n, C] on every rank (shares in rank order, cut to n);
    backward: this rank's slice of the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx, local: Tensor, group, rank: int, size: int, n: int) -> Tensor:
        ctx.group, ctx.rank, ctx.size, ctx.length = group, rank, size, local.shape[1]
        parts = [torch.empty_like(local) for _ in range(size)]
        all_gather_(parts, local, group)
        return torch.cat(parts, dim=1)[:, :n]

    @staticmethod
    def backward(ctx, grad: Tensor):
        length, lo = ctx.length, ctx.rank * ctx.length
        full = grad.new_zeros(grad.shape[0], ctx.size * length, *grad.shape[2:])
        full[:, : grad.shape[1]] = grad
        all_reduce_(full, dist.ReduceOp.SUM, ctx.group)
        return full[:, lo : lo + length], None, None, None, None


def gather_shares(local: Tensor, group, rank: int, size: int, n: int) -> Tensor:
    """Concatenate equal-length shares [B, L, ...] of all ranks along dim 1, cut to n points."""
    return _GatherShares.apply(local, group, rank, size, n)
