"""Head diversity: zero for identical heads, positive for different ones, and the Gram
route equal to cosines of dense mixing matrices."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from flare_lightning.analysis import analyse_mixers, capture_keys, mixing_similarity, spectral_distance
from flare_lightning.analysis.diversity import mean_over_pairs
from flare_lightning.kernels.reference import flare_weights
from flare_lightning.models import FLARE, FlareAttention

CHANNELS, HEADS = 16, 4


def flare(seed: int = 0, **kwargs) -> FLARE:
    torch.manual_seed(seed)
    model = FLARE(3, 1, channels=CHANNELS, num_blocks=2, num_heads=HEADS, num_latents=8, mixer_backend="explicit", **kwargs)
    for m in model.modules():  # sharper attention than the init's near-uniform one
        if isinstance(m, FlareAttention):
            m.latents.data.mul_(30)
    return model.double()


@torch.no_grad()
def tie_heads(model: FLARE) -> FLARE:
    """Make every head a copy of head 0: identical latents, and channel maps that act on
    each head's D channels alike (block-diagonal C x C weights, lifting rows repeated), so
    the residual stream stays the same in every head's slice of channels."""
    d = CHANNELS // HEADS
    for m in model.modules():
        if isinstance(m, FlareAttention):
            m.latents.copy_(m.latents[:1].expand_as(m.latents))
        elif isinstance(m, nn.Linear) and m.out_features == CHANNELS:
            if m.in_features == CHANNELS:
                m.weight.copy_(torch.block_diag(*[m.weight[:d, :d]] * HEADS))
            else:
                m.weight.copy_(m.weight[:d].repeat(HEADS, 1))
            m.bias.copy_(m.bias[:d].repeat(HEADS))
    return model


def inputs(batch: int = 2, points: int = 40):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, points, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(batch, points, dtype=torch.bool)
    mask[1, points // 2 :] = False
    return x, mask


def test_identical_heads_have_zero_diversity():
    x, mask = inputs()
    for block in analyse_mixers(tie_heads(flare()), x, mask):
        assert block.diversity_spectra.abs().max() < 1e-10
        assert block.diversity_mixing.abs().max() < 1e-10
        torch.testing.assert_close(block.singular_values[:, 1:], block.singular_values[:, :1].expand(-1, HEADS - 1, -1))


def test_different_heads_have_positive_diversity():
    x, mask = inputs()
    for block in analyse_mixers(flare(), x, mask):
        assert block.diversity_spectra.min() > 1e-3
        assert block.diversity_mixing.min() > 1e-3
        assert torch.all(block.diversity_mixing <= 1) and torch.all(block.diversity_spectra <= 1)


def test_one_different_head_is_detected():
    model = tie_heads(flare())
    with torch.no_grad():
        model.blocks[0].attn.latents[2].mul_(-1.5)
    x, mask = inputs()
    blocks = analyse_mixers(model, x, mask)
    assert blocks[0].diversity_mixing.min() > 1e-3


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "padded"])
def test_mixing_similarity_matches_dense_cosines(masked):
    g = torch.Generator().manual_seed(2)
    q = 2 * torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, 30, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 30, dtype=torch.bool)
    if masked:
        mask[0, 25:] = False
    w_enc, w_dec = flare_weights(q, k, mask)
    cos = mixing_similarity(w_enc, w_dec, mask)  # [B, H, H]
    for b in range(2):
        real = mask[b]
        dense = torch.stack([(w_dec[b, h][real] @ w_enc[b, h][:, real]).flatten() for h in range(3)])  # [H, n²]
        unit = dense / dense.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(cos[b], unit @ unit.T, atol=1e-12, rtol=1e-10)


def test_spectral_distance_properties():
    sv = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    dist = spectral_distance(sv)
    torch.testing.assert_close(dist, dist.T)
    assert dist[0, 1] == 0 and dist.diagonal().abs().max() == 0
    torch.testing.assert_close(dist[0, 2], torch.tensor(1 / 3, dtype=torch.float64))  # TV of (2/3, 1/3) vs (1, 0)
    torch.testing.assert_close(mean_over_pairs(dist), torch.tensor(2 / 9, dtype=torch.float64))  # pairs: 0, 1/3, 1/3
    assert mean_over_pairs(torch.ones(1, 1)) == 0


@pytest.mark.skipif("eval_chunk_size" not in inspect.signature(FLARE).parameters, reason="FLARE without chunked eval")
def test_chunked_evaluation_is_bypassed_for_capture():
    x, mask = inputs()
    chunked = flare(eval_chunk_size=8)
    keys = capture_keys(chunked, x, mask)
    assert len(keys) == 2 and keys[0].keys.shape[2] == x.shape[1]
    assert chunked.eval_chunk_size == 8  # restored
