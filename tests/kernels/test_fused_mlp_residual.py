"""The feed-forward's ``x + mlp(LN x)`` with its residual's gradient folded into the backward kernel
(``triton_mlp.FOLD_RESIDUAL``): against float64, for both backwards, and in the whole model.
Interpreted without CUDA."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

from flare_lightning.kernels.fused_mlp import fused_mlp  # noqa: E402
from tests.kernels.fused_mlp_cases import assert_compiles_like_eager, launched_with, random_mlp, small_tiles  # noqa: E402


@pytest.fixture
def folded(tmlp, monkeypatch):
    """FOLD_RESIDUAL on, and the ``add_dout`` flags the backward op was called with."""
    flags = []
    original = tmlp.mlp_bwd
    monkeypatch.setattr(tmlp, "FOLD_RESIDUAL", True)
    monkeypatch.setattr(tmlp, "mlp_bwd", lambda *a: flags.append(a[10] if len(a) > 10 else False) or original(*a))
    return flags


@pytest.mark.parametrize("split", [True, False], ids=["split", "one-kernel"])
@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
def test_folded_residual_matches_float64(tmlp, device, folded, split, store_hidden):
    mlp, norm = random_mlp(16, 3, "gelu_tanh", seed=21)
    g = torch.Generator().manual_seed(2)
    x, dout = (torch.randn(3, 31, 16, generator=g, dtype=torch.float64) for _ in range(2))
    x_ref = x.clone().requires_grad_()
    params = list(mlp.parameters())
    ref = torch.autograd.grad(x_ref + mlp(norm(x_ref)), [x_ref, *params, norm.weight, norm.bias], dout)
    refs = [ref[0], torch.stack(ref[1:-2][0::2]), torch.stack(ref[1:-2][1::2]), ref[-2], ref[-1]]
    w, b, lnw, lnb = (t.detach().float().to(device).requires_grad_() for t in (*mlp.stacked(), norm.weight, norm.bias))
    xd = x.float().to(device).requires_grad_()
    with launched_with(tmlp, small_tiles(tmlp, split)):
        out = fused_mlp(xd, w, b, (lnw, lnb, norm.eps), xd, "gelu_tanh", store_hidden=store_hidden)
        grads = torch.autograd.grad(out, [xd, w, b, lnw, lnb], dout.float().to(device))
    assert folded == [True]  # one backward, dx with the residual's gradient in it
    tol = 1e-5 if torch.get_float32_matmul_precision() == "highest" else 2e-3
    with torch.no_grad():
        y = x + mlp(norm(x))
    assert ((out.double().cpu() - y).norm() / y.norm()).item() < tol
    for name, got, want in zip(["dx", "dW", "db", "dLN weight", "dLN bias"], grads, refs):
        err = ((got.double().cpu() - want).norm() / want.norm()).item()
        assert err < tol, f"{name}: {err:.3g}"


def test_a_separate_residual_is_not_folded(tmlp, device, folded):
    """Only a residual that is x itself folds: another tensor keeps its own gradient."""
    mlp, norm = random_mlp(16, 1, "silu", seed=4)
    w, b = (t.detach().float().to(device).requires_grad_() for t in mlp.stacked())
    x, res = (torch.randn(2, 9, 16, device=device, requires_grad=True) for _ in range(2))
    out = fused_mlp(x, w, b, None, res, "silu")
    dx, dres = torch.autograd.grad(out, [x, res], torch.ones_like(out))
    assert folded == [False]
    torch.testing.assert_close(dres, torch.ones_like(res))


def test_flare_with_folded_residuals_matches_torch(tmlp, device, folded):
    """The whole model with every block's feed-forward folded: outputs and gradients against the
    float64 PyTorch MLPs."""
    from tests.kernels.test_fused_mlp import assert_matches_plain, flare_pair

    plain, fused = flare_pair(6, True)
    assert_matches_plain(plain, fused.to(device), device, seed=8, n=35, short=20)
    assert folded.count(True) == len(fused.blocks)  # each block's feed-forward folded (keys and values have no residual)


def test_compiled_block_folds_without_graph_break(tmlp, device, folded):
    """``torch.compile(fullgraph=True)`` sees the feed-forward's residual is its input (the fold is
    decided while tracing) and computes what the eager block does."""
    from tests.kernels.test_fused_mlp import flare_pair

    _, fused = flare_pair(9)
    assert_compiles_like_eager(fused.blocks[0].to(device), torch.randn(2, 29, 16, device=device))
    assert folded.count(True) == 2  # the feed-forward of the eager block and of the compiled one


def test_opcheck_folded(tmlp, device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 21, 16, generator=g).to(device).requires_grad_()
    w = (0.2 * torch.randn(4, 16, 16, generator=g)).to(device).requires_grad_()
    b = (0.2 * torch.randn(4, 16, generator=g)).to(device).requires_grad_()
    ln_w, ln_b = torch.ones(16, device=device, requires_grad=True), torch.zeros(16, device=device, requires_grad=True)
    torch.library.opcheck(tmlp.mlp_fwd, (x, w, b, ln_w, ln_b, x, 1e-5, 0, torch.float32, torch.float32, True, True))
