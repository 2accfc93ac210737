"""FLARE attention: the token mixing W_dec W_enc is row-stochastic with rank at most M."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.kernels import flare_mix_explicit
from flare_lightning.models import FlareAttention


@pytest.mark.parametrize("num_latents", [3, 7])
def test_mixing_matrix_is_row_stochastic_and_low_rank(num_latents):
    torch.manual_seed(0)
    attn = FlareAttention(channels=12, num_heads=3, num_latents=num_latents).double()
    x = torch.randn(2, 40, 12, dtype=torch.float64)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    w_enc, w_dec = attn.attention_weights(x, mask)
    mixing = w_dec @ w_enc  # [B, H, N, N]
    torch.testing.assert_close(mixing.sum(-1), torch.ones(2, 3, 40, dtype=torch.float64))
    assert (mixing >= 0).all()
    assert torch.linalg.matrix_rank(mixing).max() <= num_latents
    assert mixing[1, :, :, 25:].abs().max() == 0  # padded points receive no weight


def test_forward_equals_weights_applied_to_values():
    torch.manual_seed(1)
    attn = FlareAttention(channels=8, num_heads=2, num_latents=4, mixer_backend="sdpa").double()
    x = torch.randn(3, 20, 8, dtype=torch.float64)
    v = attn._heads(attn.v_proj(x))
    k = attn._heads(attn.k_proj(x))
    y = flare_mix_explicit(attn.latents, k, v)
    expected = attn.out_proj(y.transpose(1, 2).reshape(3, 20, 8))
    torch.testing.assert_close(attn(x), expected, rtol=1e-10, atol=1e-10)


def test_channels_must_split_into_heads():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        FlareAttention(channels=10, num_heads=3, num_latents=4)
