"""Full-attention Transformer: size at the reference configuration, attention against an
explicit softmax, masks, padding and batch independence."""

from __future__ import annotations

import math

import pytest
import torch

from flare_lightning.models import Transformer
from flare_lightning.models.transformer import SelfAttention
from tests.models.invariance import assert_padding_and_batch_invariant, assert_permutation_equivariant, num_params


def transformer_params(in_dim: int, out_dim: int, c: int = 80, blocks: int = 8, ratio: float = 4.0,
                       io_layers: int = 2) -> int:
    """Parameter count of the reference vanilla Transformer (FLARE.py TransformerWrapper), by hand."""
    hidden = int(c * ratio)
    lift = (in_dim * c + c) + io_layers * (c * c + c) + (c * c + c)  # ResidualMLP(in, C, C)
    block = (
        2 * (2 * c)  # two LayerNorms
        + (c * 3 * c + 3 * c) + (c * c + c)  # qkv (with bias), out_proj
        + (c * hidden + hidden) + (hidden * c + c)  # feed-forward
    )
    head = 2 * c + (c * c + c) + io_layers * (c * c + c) + (c * out_dim + out_dim)  # LayerNorm + ResidualMLP(C, C, out)
    return lift + blocks * block + head


def test_parameter_count_at_the_reference_configuration():
    # 19,760 (lift) + 8 x 77,840 (blocks) + 19,681 (norm + head) = 662,161 for Darcy's 3 inputs
    assert transformer_params(3, 1) == 19_760 + 8 * 77_840 + 19_681 == 662_161
    assert num_params(Transformer(in_dim=3, out_dim=1)) == 662_161
    assert num_params(Transformer(in_dim=2, out_dim=1)) == transformer_params(2, 1) == 662_081  # elasticity
    model = Transformer(in_dim=4, out_dim=2, channels=32, num_blocks=3, num_heads=2, mlp_ratio=2.0, io_layers=1)
    assert num_params(model) == transformer_params(4, 2, 32, 3, 2.0, 1)


def test_attention_matches_explicit_softmax_with_masked_keys():
    torch.manual_seed(0)
    attn = SelfAttention(channels=12, num_heads=3).double()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    mask = torch.tensor([[True] * 6 + [False] * 3, [True] * 9])
    out = attn(x, mask)
    q, k, v = attn.qkv(x).split(12, dim=-1)
    for b in range(2):
        keep = mask[b]
        heads = []
        for h in range(3):
            cols = slice(4 * h, 4 * h + 4)
            logits = q[b, :, cols] @ k[b, keep][:, cols].T / math.sqrt(4)  # [N, N_real]
            heads.append(torch.softmax(logits, dim=-1) @ v[b, keep][:, cols])
        torch.testing.assert_close(out[b], attn.proj_out(torch.cat(heads, dim=-1)), rtol=1e-10, atol=1e-12)


def small() -> Transformer:
    torch.manual_seed(0)
    return Transformer(in_dim=3, out_dim=2, channels=16, num_blocks=2, num_heads=4).double().eval()


def test_padding_and_batch_independence():
    assert_padding_and_batch_invariant(small(), in_dim=3)


def test_permutation_equivariance():
    assert_permutation_equivariant(small(), in_dim=3)


def test_bad_sizes_are_reported():
    with pytest.raises(ValueError, match="channels \\(80\\) must be divisible by num_heads \\(3\\)"):
        Transformer(in_dim=3, out_dim=1, num_heads=3)
    with pytest.raises(ValueError, match="expects 3 input channels, got 2"):
        small()(torch.randn(1, 5, 2, dtype=torch.float64))
