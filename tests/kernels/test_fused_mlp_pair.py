"""The key and value MLPs as one fused op (``triton_mlp_pair``): against float64, and against the two
fused MLPs apart (the same kernels; only the dx sum rounds once more). Interpreted without CUDA."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

from flare_lightning.kernels.fused_mlp import fused_mlp  # noqa: E402
from tests.kernels.fused_mlp_cases import (  # noqa: E402
    assert_compiles_like_eager, launched_with, random_mlp, small_tiles, switched_on,
)


def two_mlps(width: int, layers: int, act: str, seed: int):
    """Two float64 MLPs of one width and one LayerNorm (the block's norm1)."""
    mlp1, norm = random_mlp(width, layers, act, seed)
    mlp2, _ = random_mlp(width, layers, act, seed + 100)
    return mlp1, mlp2, norm


def on_device(tensors, device, dtype=torch.float32):
    return [t.detach().to(device=device, dtype=dtype).requires_grad_() for t in tensors]


@pytest.mark.parametrize("split", [True, False], ids=["split", "one-kernel"])
@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
@pytest.mark.parametrize("width, layers, act", [(16, 3, "gelu_tanh"), (32, 1, "silu"), (16, 0, "gelu")])
def test_pair_matches_float64(tmlp, pair, device, split, store_hidden, width, layers, act):
    """Outputs and every gradient (x, both MLPs' weights and biases, the shared LayerNorm's) of
    ``(mlp1(LN x), mlp2(LN x))`` against float64 autograd."""
    mlp1, mlp2, norm = two_mlps(width, layers, act, seed=width + layers)
    g = torch.Generator().manual_seed(7)
    x, d1, d2 = (torch.randn(3, 29, width, generator=g, dtype=torch.float64) for _ in range(3))
    x_ref = x.clone().requires_grad_()
    h = norm(x_ref)
    p1, p2 = list(mlp1.parameters()), list(mlp2.parameters())  # (weight, bias) per layer, first layer first
    ref = torch.autograd.grad([mlp1(h), mlp2(h)], [x_ref, *p1, *p2, norm.weight, norm.bias], [d1, d2])
    g1, g2 = ref[1:1 + len(p1)], ref[1 + len(p1):1 + len(p1) + len(p2)]
    refs = [ref[0], torch.stack(g1[0::2]), torch.stack(g1[1::2]), torch.stack(g2[0::2]), torch.stack(g2[1::2]),
            ref[-2], ref[-1]]
    w1, b1, w2, b2, lnw, lnb = on_device([*mlp1.stacked(), *mlp2.stacked(), norm.weight, norm.bias], device)
    xd = x.to(device=device, dtype=torch.float32).requires_grad_()
    with launched_with(tmlp, small_tiles(tmlp, split)):
        k, v = pair.fused_mlp_pair_triton(xd, (w1, b1), (w2, b2), (lnw, lnb, norm.eps), act, None, store_hidden)
        grads = torch.autograd.grad([k, v], [xd, w1, b1, w2, b2, lnw, lnb],
                                    [d1.to(device, torch.float32), d2.to(device, torch.float32)])
    tol = 1e-5 if torch.get_float32_matmul_precision() == "highest" else 2e-3
    with torch.no_grad():
        expected = [mlp1(norm(x)), mlp2(norm(x))]
    for name, got, ref in zip(["k", "v"], [k, v], expected):
        assert ((got.double().cpu() - ref).norm() / ref.norm()).item() < tol, name
    names = ["dx", "dW1", "db1", "dW2", "db2", "dLN weight", "dLN bias"]
    for name, got, ref in zip(names, grads, refs):
        err = ((got.double().cpu() - ref).norm() / ref.norm()).item()
        assert err < tol, f"{name}: {err:.3g}"


def test_pair_agrees_with_the_two_mlps_apart_in_bf16(tmlp, pair, device):
    """Under bf16 autocast, on bf16 inputs as the model's residual stream: the same kernels, so the
    outputs and weight gradients are the same numbers; dx differs by one rounding at most."""
    mlp1, mlp2, norm = two_mlps(32, 3, "gelu_tanh", seed=3)
    g = torch.Generator().manual_seed(11)
    x, d1, d2 = (torch.randn(2, 41, 32, generator=g).to(device=device, dtype=torch.bfloat16) for _ in range(3))
    results = []
    for paired in (True, False):
        params = on_device([*mlp1.stacked(), *mlp2.stacked(), norm.weight, norm.bias], device)
        w1, b1, w2, b2, lnw, lnb = params
        xd = x.clone().requires_grad_()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if paired:
                k, v = pair.fused_mlp_pair_triton(xd, (w1, b1), (w2, b2), (lnw, lnb, norm.eps), "gelu_tanh",
                                                  torch.bfloat16, store_hidden=True)
            else:
                ln = (lnw, lnb, norm.eps)
                k = fused_mlp(xd, w1, b1, ln, None, "gelu_tanh", torch.bfloat16, store_hidden=True)
                v = fused_mlp(xd, w2, b2, ln, None, "gelu_tanh", torch.bfloat16, store_hidden=True)
        results.append([k, v, *torch.autograd.grad([k, v], [xd, *params], [d1, d2])])
    paired, apart = results
    for name, a, b in zip(["k", "v", "dx", "dW1", "db1", "dW2", "db2", "dLN weight", "dLN bias"], paired, apart):
        if name == "dx":
            # bf16: the pair rounds dx1 before adding dx2 (one rounding more, ~2^-9 of each element)
            assert (a.float() - b.float()).norm() / b.float().norm() < 4e-3
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
def test_flare_with_paired_key_value_mlps_matches_torch(tmlp, pair, device, monkeypatch, store_hidden):
    """The whole model with ``KV_PAIR`` on (every block's keys and values through the pair op):
    outputs and every parameter's gradient against the float64 PyTorch MLPs."""
    from tests.kernels.test_fused_mlp import assert_matches_plain, flare_pair

    calls = switched_on(pair, "fused_mlp_pair_triton", "KV_PAIR", monkeypatch)
    plain, fused = flare_pair(1, store_hidden)
    assert_matches_plain(plain, fused.to(device), device, seed=5, n=37, short=23)
    assert len(calls) == len(fused.blocks)  # one pair op per block


@pytest.mark.parametrize("save", [False, True], ids=["recompute", "stored"])
def test_opcheck(tmlp, pair, device, save):
    """The op's fake shapes, schema and registered autograd as torch.library checks them."""
    g = torch.Generator().manual_seed(4)

    def param(*shape):
        return (0.2 * torch.randn(*shape, generator=g)).to(device).requires_grad_()

    x = torch.randn(2, 21, 16, generator=g).to(device).requires_grad_()
    ln_w, ln_b = torch.ones(16, device=device, requires_grad=True), torch.zeros(16, device=device, requires_grad=True)
    args = (x, param(3, 16, 16), param(3, 16), param(3, 16, 16), param(3, 16), ln_w, ln_b, 1e-5, 0,
            torch.float32, torch.float32, save)
    torch.library.opcheck(pair.mlp_pair_fwd, args)


def test_compiled_block_with_the_pair_has_no_graph_break(tmlp, pair, device, monkeypatch):
    """``torch.compile(fullgraph=True)`` traces a block whose keys and values run as the pair op
    (the switch read while tracing), and it computes what the eager block does."""
    from tests.kernels.test_fused_mlp import flare_pair

    calls = switched_on(pair, "fused_mlp_pair_triton", "KV_PAIR", monkeypatch)
    _, fused = flare_pair(4)
    assert_compiles_like_eager(fused.blocks[0].to(device), torch.randn(2, 33, 16, device=device))
    assert len(calls) == 2  # the eager block and the traced one


@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
def test_pair_recomputing_layer0_input_matches_float64(tmlp, pair, device, monkeypatch, store_hidden):
    """``RECOMPUTE_H0``: neither MLP of the pair writes LN(x), each of its kernels recomputes it."""
    monkeypatch.setattr(tmlp, "RECOMPUTE_H0", True)
    test_pair_matches_float64(tmlp, pair, device, True, store_hidden, 16, 3, "gelu_tanh")
