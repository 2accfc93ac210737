"""Shared by the fused-MLP kernel tests: random float64 MLPs, the fused path's errors against them,
the cases they run, and launches with a chosen ``MLPConfig``."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from flare_lightning.kernels.fused_mlp import fused_mlp
from flare_lightning.models.mlp import ResidualMLP


def random_mlp(width: int, layers: int, act: str, seed: int) -> tuple[ResidualMLP, nn.LayerNorm]:
    """A float64 ResidualMLP and LayerNorm with O(1) random parameters (not the small init,
    so every layer's contribution shows in the output)."""
    g = torch.Generator().manual_seed(seed)
    mlp, norm = ResidualMLP(width, width, width, layers, act).double(), nn.LayerNorm(width).double()
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
        norm.weight.copy_(1 + 0.3 * torch.randn(width, generator=g, dtype=torch.float64))
        norm.bias.copy_(0.3 * torch.randn(width, generator=g, dtype=torch.float64))
    return mlp, norm


def fused_errors(tmlp, device, width, layers, act, with_ln, with_res, dtype, seed, rows=(3, 37), store_hidden=False):
    """Relative L2 errors of the fused output and gradients against the float64 MLP."""
    mlp, norm = random_mlp(width, layers, act, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x, res, dout = (torch.randn(*rows, width, generator=g, dtype=torch.float64) for _ in range(3))
    x_ref = x.clone().requires_grad_()
    res_ref = res.clone().requires_grad_()
    params = [*mlp.parameters(), norm.weight, norm.bias]
    y_ref = mlp(norm(x_ref) if with_ln else x_ref) + (res_ref if with_res else 0.0)
    ref = torch.autograd.grad(y_ref, [x_ref, res_ref, *params], dout, allow_unused=True)
    w_ref, b_ref = (torch.stack(ref[2:-2][i::2]) for i in (0, 1))  # ResidualMLP order: (weight, bias) per layer

    weight, bias = (t.detach().float().to(device).requires_grad_() for t in mlp.stacked())
    ln_w, ln_b = (t.detach().float().to(device).requires_grad_() for t in (norm.weight, norm.bias))
    xd = x.to(device=device, dtype=dtype).requires_grad_()
    rd = res.to(device=device, dtype=dtype).requires_grad_()
    out = fused_mlp(xd, weight, bias, (ln_w, ln_b, norm.eps) if with_ln else None,
                    rd if with_res else None, act, store_hidden=store_hidden)
    assert out.shape == x.shape and torch.isfinite(out).all()
    wanted = [xd, weight, bias] + ([ln_w, ln_b] if with_ln else []) + ([rd] if with_res else [])
    grads = torch.autograd.grad(out, wanted, dout.to(device=device, dtype=out.dtype))

    def rel(a, b):
        return ((a.detach().double().cpu() - b).norm() / b.norm()).item()

    errors = {"y": rel(out, y_ref), "dx": rel(grads[0], ref[0]), "dw": rel(grads[1], w_ref), "db": rel(grads[2], b_ref)}
    if with_ln:
        errors.update(dln_w=rel(grads[3], ref[-2]), dln_b=rel(grads[4], ref[-1]))
    if with_res:
        errors["dres"] = rel(grads[-1], ref[1])
    return errors


CASES = [  # width, hidden layers, act, LayerNorm, residual
    (16, 3, "gelu_tanh", True, True),
    (32, 3, "gelu_tanh", True, False),
    (16, 0, "gelu", False, True),
    (16, 1, "silu", True, True),
    (32, 4, "relu", False, False),
]


@contextlib.contextmanager
def launched_with(tmlp, cfg):
    """The fused kernels launch with ``cfg`` (``triton_mlp.CONFIG_OVERRIDE``) inside the block."""
    saved = tmlp.CONFIG_OVERRIDE
    tmlp.CONFIG_OVERRIDE = cfg
    try:
        yield cfg
    finally:
        tmlp.CONFIG_OVERRIDE = saved


def small_tiles(tmlp, split: bool):
    """Tiles small enough for many of them at the tests' row counts; with ``split`` the two-kernel
    backward (row pass, then the weight-gradient GEMM over three row slices)."""
    return tmlp.MLPConfig(32, 4, 32, 4, 2, stored_rows=32, split=split, split_rows=16, dw_rows=16, dw_programs_per_sm=8)


def assert_compiles_like_eager(block: torch.nn.Module, x: torch.Tensor) -> None:
    """``torch.compile(fullgraph=True)`` of ``block`` (a graph break fails it): its output and the input's
    gradient of ``out.square().sum()`` as the eager block's (Inductor may reassociate fp32 sums)."""
    from tests.kernels.conftest import HAS_CUDA

    x = x.detach().requires_grad_()
    expected = block(x)
    (g_expected,) = torch.autograd.grad(expected.square().sum(), x)
    torch._dynamo.reset()
    try:
        out = torch.compile(block, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")(x)
        (g_out,) = torch.autograd.grad(out.square().sum(), x)
    finally:
        torch._dynamo.reset()
    for got, want in ((out, expected), (g_out, g_expected)):
        assert ((got - want).norm() / want.norm()).item() < 1e-4


def switched_on(module, op: str, switch: str, monkeypatch) -> list:
    """Set ``module.<switch>`` True for the test and count the calls of ``module.<op>`` (each appends to the list)."""
    calls = []
    original = getattr(module, op)
    monkeypatch.setattr(module, op, lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(module, switch, True)
    return calls
