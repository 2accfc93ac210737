"""fuse_kv: the key and value MLPs side by side (block-diagonal GEMMs) equal the two MLPs (float64)."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.models import FLARE
from flare_lightning.models.mlp import ResidualMLP, residual_mlp_pair


@pytest.mark.parametrize("dims,residuals", [((6, 6, 6, 2), (True, True)), ((5, 8, 3, 1), (True, True)),
                                            ((6, 6, 6, 0), (False, False)), ((4, 4, 4, 3), (True, False))])
def test_pair_equals_two_mlps(dims, residuals):
    torch.manual_seed(0)
    a, b = (ResidualMLP(*dims, act="gelu_tanh", input_residual=residuals[0], output_residual=residuals[1]).double()
            for _ in range(2))
    for p in [*a.parameters(), *b.parameters()]:  # non-zero biases, so a swapped bias would show
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(3, 7, dims[0], dtype=torch.float64, requires_grad=True)
    ra, rb = a(x), b(x)
    grads_ref = torch.autograd.grad((ra * 1.3).sum() + (rb ** 2).sum(), [x, *a.parameters(), *b.parameters()])
    fa, fb = residual_mlp_pair(x, a, b)
    torch.testing.assert_close(fa, ra, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fb, rb, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((fa * 1.3).sum() + (fb ** 2).sum(), [x, *a.parameters(), *b.parameters()])
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_pair_refuses_mlps_of_different_shapes():
    with pytest.raises(ValueError, match="same layers"):
        residual_mlp_pair(torch.randn(2, 4), ResidualMLP(4, 4, 4, 2), ResidualMLP(4, 4, 4, 1))
    with pytest.raises(ValueError, match="activation"):
        residual_mlp_pair(torch.randn(2, 4), ResidualMLP(4, 4, 4, 2, act="relu"), ResidualMLP(4, 4, 4, 2))


@pytest.mark.parametrize("chunk", [None, 5])
def test_fused_model_equals_plain_model(chunk, monkeypatch):
    """Same weights, same outputs and parameter gradients, masks included; checkpoints load both
    ways. The pair runs once per block without chunking; with ``mlp_chunk_size`` it is not used."""
    from flare_lightning.models import attention

    calls = []
    monkeypatch.setattr(attention, "residual_mlp_pair", lambda *a: calls.append(1) or residual_mlp_pair(*a))
    torch.manual_seed(1)
    kw = dict(in_dim=3, out_dim=2, channels=8, num_blocks=2, num_heads=2, num_latents=4, mixer_backend="explicit",
              mlp_chunk_size=chunk)
    plain, fused = FLARE(**kw).double(), FLARE(**kw, fuse_kv=True).double()
    fused.load_state_dict(plain.state_dict())
    assert plain.state_dict().keys() == fused.state_dict().keys()
    x = torch.randn(2, 11, 3, dtype=torch.float64)
    mask = torch.arange(11)[None] < torch.tensor([[11], [6]])
    outs = []
    for model in (plain, fused):
        y = model(x, mask)
        loss = (y[mask] ** 2).sum()
        outs.append((y, torch.autograd.grad(loss, list(model.parameters()))))
    assert len(calls) == (2 if chunk is None else 0)
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-12, atol=1e-12)
    for g, r in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
