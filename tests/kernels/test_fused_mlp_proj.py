"""The attention's output projection and residual add folded into the feed-forward MLP
(``triton_mlp_proj``): ``x1 + mlp(LN x1)`` with ``x1 = x + y Pᵀ + p_b``, output and every gradient
against float64 autograd, in bf16 against the block run apart, and the model with it on against off.
Interpreted without CUDA."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

from tests.kernels.fused_mlp_cases import launched_with, random_mlp, small_tiles, switched_on  # noqa: E402


def reference(width: int, layers: int, act: str, seed: int):
    """A float64 MLP, LayerNorm and output projection (O(1) weights: each one's gradient shows)."""
    mlp, norm = random_mlp(width, layers, act, seed)
    out_proj = torch.nn.Linear(width, width).double()
    g = torch.Generator().manual_seed(seed + 50)
    with torch.no_grad():
        out_proj.weight.copy_(0.3 * torch.randn(width, width, generator=g, dtype=torch.float64))
        out_proj.bias.copy_(0.3 * torch.randn(width, generator=g, dtype=torch.float64))
    return mlp, norm, out_proj


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.detach().double().cpu() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
@pytest.mark.parametrize("width, layers, act", [(16, 3, "gelu_tanh"), (32, 1, "silu"), (16, 0, "gelu")])
def test_folded_projection_matches_float64(tmlp, proj, device, store_hidden, width, layers, act):
    """Output and the gradients of x, y, the projection's weight and bias, the MLP's weights and
    biases and the LayerNorm's, in float32 against float64."""
    mlp, norm, out_proj = reference(width, layers, act, seed=width + layers)
    g = torch.Generator().manual_seed(11)
    x, y, dout = (torch.randn(3, 29, width, generator=g, dtype=torch.float64) for _ in range(3))
    x_ref, y_ref = x.clone().requires_grad_(), y.clone().requires_grad_()
    x1 = x_ref + out_proj(y_ref)
    out_ref = x1 + mlp(norm(x1))
    params = list(mlp.parameters())
    ref = torch.autograd.grad(out_ref, [x_ref, y_ref, out_proj.weight, out_proj.bias, *params, norm.weight,
                                        norm.bias], dout)
    refs = [out_ref.detach(), *ref[:4], torch.stack(ref[4:4 + len(params)][0::2]),
            torch.stack(ref[4:4 + len(params)][1::2]), ref[-2], ref[-1]]

    def dev(t):
        return t.detach().to(device=device, dtype=torch.float32).requires_grad_()

    xd, yd = dev(x), dev(y)
    pw, pb, w, b, lnw, lnb = (dev(t) for t in (out_proj.weight, out_proj.bias, *mlp.stacked(), norm.weight, norm.bias))
    with launched_with(tmlp, small_tiles(tmlp, True)):
        out = proj.fused_mlp_proj_triton(xd, yd, (pw, pb), (w, b), (lnw, lnb, norm.eps), act, store_hidden)
        grads = torch.autograd.grad(out, [xd, yd, pw, pb, w, b, lnw, lnb], dout.to(device, torch.float32))
    tol = 1e-5 if torch.get_float32_matmul_precision() == "highest" else 2e-3
    names = ["out", "dx", "dy", "dP", "dp_b", "dW", "db", "dln_w", "dln_b"]
    errors = {name: rel(got, want) for name, got, want in zip(names, [out, *grads], refs)}
    assert max(errors.values()) < tol, errors


def test_bf16_fold_is_the_block_apart_to_rounding(tmlp, proj, device):
    """Under bf16 autocast: the fold against ``x + out_proj(y)`` then the fused MLP with its residual,
    within bf16 rounding of each other (the fold keeps x1 in fp32), both near float64."""
    from flare_lightning.kernels.fused_mlp import fused_mlp

    mlp, norm, out_proj = reference(32, 3, "gelu_tanh", seed=5)
    g = torch.Generator().manual_seed(3)
    x, y, dout = (torch.randn(2, 40, 32, generator=g, dtype=torch.float64) for _ in range(3))
    x_ref = x.clone().requires_grad_()
    x1 = x_ref + out_proj(y)
    (dx_ref,) = torch.autograd.grad(x1 + mlp(norm(x1)), [x_ref], dout)

    def run(fold: bool):
        xd = x.to(device, torch.bfloat16).requires_grad_()
        yd = y.to(device, torch.bfloat16)
        pw, pb, w, b, lnw, lnb = (t.detach().to(device, torch.float32) for t in (
            out_proj.weight, out_proj.bias, *mlp.stacked(), norm.weight, norm.bias))
        with launched_with(tmlp, small_tiles(tmlp, True)), torch.autocast(device.type, dtype=torch.bfloat16):
            if fold:
                out = proj.fused_mlp_proj_triton(xd, yd, (pw, pb), (w, b), (lnw, lnb, norm.eps), "gelu_tanh")
            else:
                x1d = xd + torch.nn.functional.linear(yd, pw, pb)
                out = fused_mlp(x1d, w, b, (lnw, lnb, norm.eps), x1d, "gelu_tanh")
        (dx,) = torch.autograd.grad(out, [xd], dout.to(device, out.dtype))
        return out, dx

    (out_f, dx_f), (out_a, dx_a) = run(True), run(False)
    assert out_f.dtype == out_a.dtype == torch.bfloat16
    assert rel(out_f, out_a.double().cpu()) < 2e-2 and rel(dx_f, dx_a.double().cpu()) < 3e-2
    assert rel(dx_f, dx_ref) < 3e-2


def test_refuses_what_it_does_not_fold(tmlp, proj, device):
    x = torch.randn(2, 8, 16, device=device)
    w, b = torch.randn(2, 16, 16, device=device), torch.randn(2, 16, device=device)
    ln = (torch.ones(16, device=device), torch.zeros(16, device=device), 1e-5)
    with pytest.raises(ValueError, match=r"y must be shaped as x"):
        proj.fused_mlp_proj_triton(x, x[:, :4], (w[0], b[0]), (w, b), ln, "gelu")
    with pytest.raises(ValueError, match="one dtype"):
        proj.fused_mlp_proj_triton(x, x.half(), (w[0], b[0]), (w, b), ln, "gelu")


def test_opcheck(tmlp, proj, device):
    g = torch.Generator().manual_seed(2)

    def t(*shape):
        return torch.randn(*shape, generator=g).to(device).requires_grad_()

    args = (t(2, 21, 16), t(2, 21, 16), t(16, 16), t(16), t(2, 16, 16), t(2, 16),
            torch.ones(16, device=device, requires_grad=True), torch.zeros(16, device=device, requires_grad=True),
            1e-5, 0, torch.float32, False)
    with launched_with(tmlp, small_tiles(tmlp, True)):
        torch.library.opcheck(proj.mlp_proj_fwd, args)


def counting_fold(proj, monkeypatch) -> list:
    """``FOLD_PROJECTION`` on, the fold's calls counted."""
    return switched_on(proj, "fused_mlp_proj_triton", "FOLD_PROJECTION", monkeypatch)


@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
def test_flare_with_the_folded_projection_matches_torch(tmlp, proj, device, monkeypatch, store_hidden):
    """The whole model with ``FOLD_PROJECTION`` on (every block's out_proj inside its feed-forward):
    outputs and every parameter's gradient against the float64 PyTorch model."""
    from tests.kernels.test_fused_mlp import assert_matches_plain, flare_pair

    calls = counting_fold(proj, monkeypatch)
    plain, fused = flare_pair(1, store_hidden)
    assert_matches_plain(plain, fused.to(device), device, seed=5, n=37, short=23)
    assert len(calls) == len(fused.blocks)  # one fold per block


def test_folded_block_compiles_as_one_graph(tmlp, proj, device, monkeypatch):
    from tests.kernels.fused_mlp_cases import assert_compiles_like_eager
    from tests.kernels.test_fused_mlp import flare_pair

    calls = counting_fold(proj, monkeypatch)
    _, fused = flare_pair(4)
    assert_compiles_like_eager(fused.blocks[0].to(device), torch.randn(2, 33, 16, device=device))
    assert len(calls) == 2  # the eager block and the traced one


@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
def test_fold_recomputing_layer0_input_matches_float64(tmlp, proj, device, monkeypatch, store_hidden):
    """``RECOMPUTE_H0`` with the fold: LN(x1) recomputed from the x1 the forward wrote."""
    monkeypatch.setattr(tmlp, "RECOMPUTE_H0", True)
    test_folded_projection_matches_float64(tmlp, proj, device, store_hidden, 16, 3, "gelu_tanh")


def test_flare_with_every_opt_in_fold_matches_torch(tmlp, proj, device, monkeypatch):
    """The benchmark's ``-all`` rows: the key/value pair, the folded residual, the folded projection and
    LN(x) recomputed, all at once, against the float64 PyTorch model."""
    from flare_lightning.kernels import triton_mlp_pair
    from tests.kernels.test_fused_mlp import assert_matches_plain, flare_pair

    calls = counting_fold(proj, monkeypatch)
    monkeypatch.setattr(triton_mlp_pair, "KV_PAIR", True)
    monkeypatch.setattr(tmlp, "FOLD_RESIDUAL", True)
    monkeypatch.setattr(tmlp, "RECOMPUTE_H0", True)
    plain, fused = flare_pair(2, True)
    assert_matches_plain(plain, fused.to(device), device, seed=6, n=37, short=23)
    assert len(calls) == len(fused.blocks)
