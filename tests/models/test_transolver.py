"""Transolver: size at the FLARE paper's configuration, physics-attention against a plain
per-head loop, masks, padding and batch independence."""

from __future__ import annotations

import math

import pytest
import torch

from flare_lightning.models import Transolver
from flare_lightning.models.transolver import PhysicsAttention
from tests.models.invariance import assert_padding_and_batch_invariant, assert_permutation_equivariant, num_params


def transolver_params(in_dim: int, out_dim: int, c: int = 128, blocks: int = 8, heads: int = 8, slices: int = 64,
                      ratio: float = 1.0) -> int:
    """Parameter count of the reference Transolver (thuml/Transolver, FLARE.py's copy), by hand."""
    d, hidden = c // heads, int(c * ratio)
    lift = (in_dim * 2 * c + 2 * c) + (2 * c * c + c)  # Linear(in, 2C), Linear(2C, C)
    attn = (
        heads  # temperature [1, H, 1, 1]
        + 3 * (c * c + c)  # in_project_x, in_project_fx, to_out
        + (d * slices + slices)  # in_project_slice: Linear(D, G)
        + 3 * d * d  # to_q, to_k, to_v (no bias)
    )
    mlp = (c * hidden + hidden) + (hidden * c + c)
    block = 2 * (2 * c) + attn + mlp  # two LayerNorms
    head = 2 * c + (c * out_dim + out_dim)  # ln_3, mlp2 of the last block
    return lift + blocks * block + head + c  # + placeholder [C]


def test_parameter_count_at_the_paper_configuration():
    # 33,920 (lift) + 8 x 84,936 (blocks) + 385 (head) + 128 (placeholder) = 713,921 for Darcy's 3 inputs
    assert transolver_params(3, 1) == 33_920 + 8 * 84_936 + 385 + 128 == 713_921
    assert num_params(Transolver(in_dim=3, out_dim=1)) == 713_921
    assert num_params(Transolver(in_dim=2, out_dim=1)) == transolver_params(2, 1) == 713_665  # elasticity
    assert num_params(Transolver(in_dim=5, out_dim=3, channels=32, num_blocks=2, num_heads=4, num_slices=7,
                                 mlp_ratio=2.0)) == transolver_params(5, 3, 32, 2, 4, 7, 2.0)


def reference_physics_attention(attn: PhysicsAttention, x: torch.Tensor) -> torch.Tensor:
    """Plain loops over samples and heads (one sample [N, C], no mask)."""
    h, d = attn.num_heads, attn.head_dim
    sel, feat = attn.proj_slice_in(x), attn.proj_feat(x)  # [N, C]
    outs = []
    for i in range(h):
        cols = slice(i * d, (i + 1) * d)
        w = torch.softmax(attn.slice_logits(sel[:, cols]) / attn.temperature[0, i, 0, 0], dim=-1)  # [N, G]
        tokens = (w.T @ feat[:, cols]) / (w.sum(0)[:, None] + 1e-5)  # [G, D]
        q, k, v = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
        mixed = torch.softmax(q @ k.T / math.sqrt(d), dim=-1) @ v  # [G, G] @ [G, D]
        outs.append(w @ mixed)  # [N, D]
    return attn.proj_out(torch.cat(outs, dim=-1))


def test_physics_attention_matches_a_plain_loop():
    torch.manual_seed(0)
    attn = PhysicsAttention(channels=24, num_heads=3, num_slices=5).double()
    with torch.no_grad():
        attn.temperature.uniform_(0.3, 2.0)  # distinct per head
    x = torch.randn(2, 33, 24, dtype=torch.float64)
    out = attn(x)
    for b in range(2):
        torch.testing.assert_close(out[b], reference_physics_attention(attn, x[b]), rtol=1e-10, atol=1e-12)


def test_padded_points_get_no_slice_weight():
    torch.manual_seed(0)
    attn = PhysicsAttention(channels=16, num_heads=2, num_slices=4).double()
    mask = torch.rand(2, 20) > 0.3
    w = attn.slice_weights(torch.randn(2, 20, 16, dtype=torch.float64), mask).transpose(1, 2)  # [B, N, H, G]
    assert torch.all(w[~mask] == 0)
    torch.testing.assert_close(w[mask].sum(-1), torch.ones(int(mask.sum()), 2, dtype=torch.float64))


def small() -> Transolver:
    torch.manual_seed(0)
    return Transolver(in_dim=3, out_dim=2, channels=16, num_blocks=2, num_heads=4, num_slices=6).double().eval()


def test_padding_and_batch_independence():
    assert_padding_and_batch_invariant(small(), in_dim=3)


def test_permutation_equivariance():
    assert_permutation_equivariant(small(), in_dim=3)


def test_initialisation_and_weight_decay_exemptions():
    torch.manual_seed(0)
    model = Transolver(in_dim=3, out_dim=1, num_blocks=4)
    linears = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert linears.std().item() == pytest.approx(0.02, rel=0.1)
    biases = torch.cat([m.bias.flatten() for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None])
    assert torch.count_nonzero(biases) == 0
    assert torch.all(model.blocks[0].attn.temperature == 0.5)
    exempt = model.no_weight_decay()
    assert {"placeholder", "blocks.0.attn.temperature", "blocks.0.norm1.weight", "lift.0.bias"} <= exempt
    assert "blocks.0.attn.proj_feat.weight" not in exempt


def test_bad_sizes_are_reported():
    with pytest.raises(ValueError, match="channels \\(30\\) must be divisible by num_heads \\(8\\)"):
        Transolver(in_dim=3, out_dim=1, channels=30)
    with pytest.raises(ValueError, match="expects 3 input channels, got 2"):
        small()(torch.randn(1, 5, 2, dtype=torch.float64))
