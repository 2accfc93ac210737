"""FLARE model: exact size, initialisation, equivariance and padding invariance."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.models import FLARE


def small_model(**kw) -> FLARE:
    args = dict(in_dim=3, out_dim=2, channels=16, num_blocks=2, num_heads=4, num_latents=8, mixer_backend="explicit")
    args.update(kw)
    torch.manual_seed(0)
    return FLARE(**args).double().eval()


def test_parameter_count_matches_reference():
    model = FLARE(in_dim=2, out_dim=1, channels=64, num_blocks=8, num_heads=8, num_latents=64)
    assert sum(p.numel() for p in model.parameters()) == 592_641


def test_initialisation_follows_reference():
    torch.manual_seed(1)
    model = FLARE(in_dim=2, out_dim=1, channels=64, num_blocks=4, num_heads=8, num_latents=64)
    latents = torch.cat([b.attn.latents.flatten() for b in model.blocks])
    linears = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
    biases = torch.cat([m.bias.flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert latents.std().item() == pytest.approx(0.1, rel=0.05)
    assert linears.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(biases) == 0


def test_latents_norms_and_biases_are_exempt_from_weight_decay():
    model = small_model()
    exempt = model.no_weight_decay()
    assert "blocks.0.attn.latents" in exempt and "blocks.1.attn.latents" in exempt
    assert "blocks.0.norm1.weight" in exempt and "lift.fc_in.bias" in exempt
    assert "lift.fc_in.weight" not in exempt


@pytest.mark.parametrize("backend", ["explicit", "sdpa"])
def test_permutation_equivariance(backend):
    model = small_model(mixer_backend=backend)
    x = torch.randn(2, 50, 3, dtype=torch.float64)
    perm = torch.randperm(50)
    out = model(x)
    out_perm = model(x[:, perm])
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["explicit", "sdpa"])
def test_padding_invariance(backend):
    """A sample alone and padded inside a batch give the same output on its real points."""
    model = small_model(mixer_backend=backend)
    a = torch.randn(1, 30, 3, dtype=torch.float64)
    b = torch.randn(1, 47, 3, dtype=torch.float64)
    batch = torch.zeros(2, 47, 3, dtype=torch.float64)
    batch[0, :30] = a[0]
    batch[0, 30:] = 1e3 * torch.randn(17, 3, dtype=torch.float64)  # garbage in the padding
    batch[1] = b[0]
    mask = torch.zeros(2, 47, dtype=torch.bool)
    mask[0, :30] = True
    mask[1] = True
    out = model(batch, mask)
    torch.testing.assert_close(out[0, :30], model(a)[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1], model(b)[0], rtol=1e-10, atol=1e-10)


def test_wrong_input_width_is_reported():
    model = small_model()
    with pytest.raises(ValueError, match="expects 3 input channels, got 2"):
        model(torch.randn(1, 5, 2, dtype=torch.float64))


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("act", ["gelu_tanh", "silu"])
def test_every_size_is_configurable(norm, act):
    model = FLARE(
        in_dim=4, out_dim=3, channels=24, num_blocks=3, num_heads=3, num_latents=5, kv_layers=1,
        ffn_layers=2, io_layers=0, mlp_ratio=2.0, act=act, norm=norm, scale=0.5,
    )
    assert len(model.blocks) == 3
    assert model.blocks[0].attn.latents.shape == (3, 5, 8)
    assert model.blocks[0].mlp.fc_in.out_features == 48
    assert len(model.blocks[0].attn.k_proj.hidden) == 1
    assert model(torch.randn(2, 11, 4)).shape == (2, 11, 3)
