"""Bodies of the context-parallel tests, run on every rank of a gloo group (see spawn.py).

Each compares the context-parallel result with the same model run whole in the same
process, so a failure names the rank and the case."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist

from flare_lightning.kernels import flare_mix_explicit
from flare_lightning.training.metrics import relative_l2
from flare_lightning.models import FLARE
from flare_lightning.parallel import ContextGroup, attach_context, local_forward
from flare_lightning.parallel.mixer import context_mix_torch, context_mix_triton


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over the whole tensor (float32 rounding alone stays near 1e-7)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def triton_ready() -> None:
    """Interpreted Triton kernels (with the test shims) when there is no CUDA."""
    from tests.kernels.conftest import triton_mixer_module

    triton_mixer_module()


def batch(seed: int, n: int, lengths: list[int] | None):
    """x [B, n, 3], y [B, n, 2] and a mask with the given real lengths (None: no mask)."""
    g = torch.Generator().manual_seed(seed)
    b = 2 if lengths is None else len(lengths)
    x = torch.randn(b, n, 3, generator=g)
    y = torch.randn(b, n, 2, generator=g) + 0.5
    mask = None
    if lengths is not None:
        mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
        x = torch.where(mask[..., None], x, torch.randn(x.shape, generator=g) * 100)  # padding must not matter
    return x, y, mask


def model_exact(rank: int, world: int, cases: list[dict]) -> None:
    """Outputs and DDP-averaged parameter gradients of a context-parallel FLARE equal the
    whole-sample model's, for each case's model options, batch and dtype.

    float32: outputs to 1e-5 relative; each parameter's gradient to 1e-5 of the norm of the
    whole gradient (a per-tensor bound would test rounding: the key MLP's output bias has a
    gradient that nearly cancels, ~1e-5 relative noise between any two fp32 orders of
    summation). float64: every tensor to 1e-10 of its own norm, so nothing can hide.
    """
    context = ContextGroup()
    for case in cases:
        options = dict(case.get("model", {}))
        dtype = case.get("dtype", torch.float32)
        if options.get("mixer_backend") == "triton":
            triton_ready()
        torch.manual_seed(0)
        net = FLARE(3, 2, channels=16, num_blocks=2, num_heads=2, num_latents=8, kv_layers=1, ffn_layers=1, **options)
        net = net.to(dtype)
        ref = copy.deepcopy(net)
        x, y, mask = batch(case.get("seed", 1), case["n"], case.get("lengths"))
        x, y = x.to(dtype), y.to(dtype)

        out_ref = ref(x, mask)
        relative_l2(out_ref, y, mask).mean().backward()
        attach_context(net, context)
        out = net(x, mask)
        relative_l2(out, y, mask).mean().backward()

        name = f"rank {rank}/{world} {case}"
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        keep = slice(None) if mask is None else mask
        assert out.shape == out_ref.shape, name
        assert rel_err(out[keep], out_ref[keep]) < tol, f"{name}: output off by {rel_err(out[keep], out_ref[keep])}"
        total = torch.cat([q.grad.flatten() for q in ref.parameters()]).double().norm()
        for (pname, p), q in zip(net.named_parameters(), ref.parameters()):
            grad = p.grad.clone()
            dist.all_reduce(grad)  # as DDP over the whole world: the mean of the ranks' gradients
            grad /= world
            scale = total if dtype == torch.float32 else q.grad.double().norm()
            err = float((grad.double() - q.grad.double()).norm() / scale)
            assert err < tol, f"{name}: gradient of {pname} off by {err}"

        with torch.no_grad():  # evaluation, also in point chunks, and the local bypass
            net.eval_chunk_size, ref.eval_chunk_size = 3, None
            chunked, plain = net(x, mask), ref(x, mask)
            with local_forward(net):
                alone = net(x, mask)
        assert rel_err(chunked[keep], plain[keep]) < tol, f"{name}: chunked evaluation off"
        assert rel_err(alone[keep], plain[keep]) < tol, f"{name}: local_forward off"


def mixer_uneven(rank: int, world: int, backend: str) -> None:
    """The mixer on shares of different lengths (no padding), one of them fully masked for
    a sample: y and the gradients of q, k, v equal the whole-sample explicit mixer's."""
    if backend == "triton":
        triton_ready()
    g = torch.Generator().manual_seed(5)
    b, h, m, d = 2, 2, 5, 4
    sizes = [7, 3, 5][:world]
    n = sum(sizes)
    q = torch.randn(h, m, d, generator=g, requires_grad=True)
    k = torch.randn(b, h, n, d, generator=g, requires_grad=True)
    v = torch.randn(b, h, n, d, generator=g, requires_grad=True)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, sizes[0] :] = False  # sample 1 lives on rank 0 only
    dy = torch.randn(b, h, n, d, generator=g)

    y_ref = flare_mix_explicit(q, k, v, mask, 0.7)
    gq, gk, gv = torch.autograd.grad(y_ref, (q, k, v), dy)

    lo = sum(sizes[:rank])
    sl = slice(lo, lo + sizes[rank])
    k_loc = k.detach()[:, :, sl].clone().requires_grad_()
    v_loc = v.detach()[:, :, sl].clone().requires_grad_()
    q_loc = q.detach().clone().requires_grad_()
    mix = context_mix_triton if backend == "triton" else context_mix_torch
    y = mix(q_loc, k_loc, v_loc, mask[:, sl].contiguous(), 0.7, None)
    y.backward(dy[:, :, sl])
    grad_q = q_loc.grad.clone()
    dist.all_reduce(grad_q)  # the latents' gradient is the sum of the shares'
    real = mask[:, sl][:, None, :, None].expand_as(y)
    name = f"rank {rank}/{world} {backend}"
    assert rel_err(y[real], y_ref[:, :, sl][real]) < 1e-5, f"{name}: y"
    assert rel_err(grad_q, gq) < 1e-5, f"{name}: dq"
    assert rel_err(k_loc.grad, gk[:, :, sl]) < 1e-5, f"{name}: dk"
    assert rel_err(v_loc.grad, gv[:, :, sl]) < 1e-5, f"{name}: dv"


def autocast_close(rank: int, world: int) -> None:
    """Under bf16 autocast (with checkpointing and chunked MLPs) the context-parallel model
    trains and agrees with the whole-sample model to bf16 accuracy."""
    context = ContextGroup()
    torch.manual_seed(0)
    net = FLARE(3, 2, channels=16, num_blocks=2, num_heads=2, num_latents=8, mixer_backend="chunked",
                checkpoint_blocks=True, mlp_chunk_size=4)
    ref = copy.deepcopy(net)
    attach_context(net, context)
    x, y, mask = batch(3, 21, [21, 12])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ref, out = ref(x, mask), net(x, mask)
        loss_ref = relative_l2(out_ref.float(), y, mask).mean()
        loss = relative_l2(out.float(), y, mask).mean()
    loss_ref.backward()
    loss.backward()
    assert out.dtype == out_ref.dtype == torch.bfloat16
    assert abs(float(loss) - float(loss_ref)) < 2e-2 * float(loss_ref)
    for p, q in zip(net.parameters(), ref.parameters()):
        grad = p.grad.clone()
        dist.all_reduce(grad)
        assert torch.isfinite(grad).all()
        assert rel_err(grad / world, q.grad) < 0.1


def sharded_training(rank: int, world: int) -> None:
    """``attach_context(whole_samples=False)`` + ``relative_l2_sharded``: each rank holds only
    its share of x, y and the mask; loss and mean gradients equal the whole-sample model's."""
    from flare_lightning.parallel import relative_l2_sharded

    context = ContextGroup()
    torch.manual_seed(0)
    net = FLARE(3, 2, channels=16, num_blocks=2, num_heads=2, num_latents=8, kv_layers=1, ffn_layers=1,
                mixer_backend="chunked", checkpoint_blocks=True)
    ref = copy.deepcopy(net)
    x, y, mask = batch(4, 11, [11, 4])
    loss_ref = relative_l2(ref(x, mask), y, mask).mean()
    loss_ref.backward()
    attach_context(net, context, whole_samples=False)
    x_loc, mask_loc = context.shard(x, mask)
    y_loc, _ = context.shard(y, mask)
    loss = relative_l2_sharded(net(x_loc, mask_loc), y_loc, mask_loc, None).mean()
    loss.backward()
    assert x_loc.shape[1] == -(-11 // world)
    assert abs(float(loss) - float(loss_ref)) < 1e-6 * float(loss_ref), f"rank {rank}: loss {loss} vs {loss_ref}"
    total = torch.cat([q.grad.flatten() for q in ref.parameters()]).norm()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        grad = p.grad.clone()
        dist.all_reduce(grad)
        assert float((grad / world - q.grad).norm() / total) < 1e-5, f"rank {rank}: gradient of {name}"


def encode_stats_merge(rank: int, world: int) -> None:
    """``merge_encode_stats`` of every rank's share equals the whole sample's encode in float64:
    the same max, and z = acc / l to 1e-12, with the last rank holding no real point of sample 1
    and shares of different lengths; identical on every rank."""
    from flare_lightning.parallel.collectives import merge_encode_stats

    g = torch.Generator().manual_seed(7)
    b, h, m, n, d = 2, 3, 4, 11, 5
    logits = torch.randn(b, h, m, n, generator=g, dtype=torch.float64) * 4
    v = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    mask = torch.arange(n)[None, :] < torch.tensor([n, 6])[:, None]  # sample 1: points 0-5 only
    cuts = torch.linspace(0, n, world + 1).round().long().tolist()
    cuts[-2] = max(cuts[-2], 7) if world > 1 else cuts[-2]  # the last share starts past sample 1's real points
    lo, hi = cuts[rank], cuts[rank + 1]

    def stats(lg, vv, mk):
        lg = lg.masked_fill(~mk[:, None, None, :], float("-inf"))
        mx = lg.amax(-1)
        p = torch.exp(lg - torch.where(torch.isinf(mx), 0.0, mx)[..., None])
        return mx, p.sum(-1), p @ vv

    mx, l, acc = merge_encode_stats(stats(logits[..., lo:hi], v[:, :, lo:hi], mask[:, lo:hi]), dist.group.WORLD)
    ref_mx, ref_l, ref_acc = stats(logits, v, mask)
    assert torch.equal(mx, ref_mx), f"rank {rank}: merged max differs"
    assert rel_err(acc / l[..., None], ref_acc / ref_l[..., None]) < 1e-12, f"rank {rank}: merged z differs"
    gathered = [torch.empty_like(acc) for _ in range(world)]
    dist.all_gather(gathered, acc.contiguous())
    assert all(torch.equal(x, gathered[0]) for x in gathered), f"rank {rank}: ranks disagree"
