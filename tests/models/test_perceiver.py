"""PerceiverIO: size at the reference configuration, encode/decode against explicit softmax,
masks, padding and batch independence."""

from __future__ import annotations

import math

import pytest
import torch

from flare_lightning.models import PerceiverIO
from tests.models.invariance import assert_padding_and_batch_invariant, assert_permutation_equivariant, num_params


def perceiver_params(in_dim: int, out_dim: int, c: int = 128, blocks: int = 8, latents: int = 512,
                     ratio: float = 4.0, io_layers: int = 2) -> int:
    """Parameter count of the reference PerceiverIO (FLARE.py pdebench/models/perceiver.py), by hand."""
    hidden = int(c * ratio)
    lin = c * c + c  # Linear(C, C) with bias
    lift = (in_dim * c + c) + io_layers * lin + lin  # ResidualMLP(in, C, C)
    encoder = latents * c + 2 * c + 3 * lin  # latents [M, C], LayerNorm, k/v/out projections
    block = 2 * (2 * c) + 3 * c * c + lin + (c * hidden + hidden) + (hidden * c + c)  # qkv has no bias
    decoder = 2 * (2 * c) + 4 * lin  # two LayerNorms, q/k/v/out projections
    head = 2 * c + lin + io_layers * lin + (c * out_dim + out_dim)  # LayerNorm + ResidualMLP(C, C, out)
    return lift + encoder + blocks * block + decoder + head


def test_parameter_count_at_the_reference_configuration():
    # 50,048 (lift) + 115,328 (encode) + 8 x 197,888 (latent blocks) + 66,560 (decode) + 49,921 (head)
    assert perceiver_params(3, 1) == 50_048 + 115_328 + 8 * 197_888 + 66_560 + 49_921 == 1_864_961
    assert num_params(PerceiverIO(in_dim=3, out_dim=1)) == 1_864_961
    assert num_params(PerceiverIO(in_dim=2, out_dim=1)) == perceiver_params(2, 1) == 1_864_833  # elasticity
    model = PerceiverIO(in_dim=4, out_dim=2, channels=32, num_blocks=3, num_heads=2, num_latents=7, mlp_ratio=2.0,
                        io_layers=1)
    assert num_params(model) == perceiver_params(4, 2, 32, 3, 7, 2.0, 1)


def small() -> PerceiverIO:
    torch.manual_seed(0)
    return PerceiverIO(in_dim=3, out_dim=2, channels=16, num_blocks=2, num_heads=4, num_latents=5).double().eval()


def explicit_cross_attention(q, k, v, heads: int) -> torch.Tensor:
    """q [Nq, C], k and v [Nk, C] -> [Nq, C], per head softmax(q k^T / sqrt(D)) v."""
    d = q.shape[-1] // heads
    out = [torch.softmax(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / math.sqrt(d), -1) @ v[:, h * d:(h + 1) * d]
           for h in range(heads)]
    return torch.cat(out, dim=-1)


def test_encode_and_decode_match_explicit_softmax():
    model = small()
    enc, dec = model.encoder, model.decoder
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    mask = torch.tensor([[True] * 7 + [False] * 4, [True] * 11])
    z = enc(x, mask)
    for b in range(2):
        xb = enc.norm(x[b, mask[b]])
        ref = enc.proj_out(explicit_cross_attention(enc.latents, enc.to_k(xb), enc.to_v(xb), 4))
        torch.testing.assert_close(z[b], ref, rtol=1e-10, atol=1e-12)
    y = dec(z, x)
    for b in range(2):
        zb, xb = dec.norm_latents(z[b]), dec.norm_points(x[b])
        ref = dec.proj_out(explicit_cross_attention(dec.to_q(xb), dec.to_k(zb), dec.to_v(zb), 4))
        torch.testing.assert_close(y[b], ref, rtol=1e-10, atol=1e-12)


def test_padding_and_batch_independence():
    assert_padding_and_batch_invariant(small(), in_dim=3)


def test_permutation_equivariance():
    assert_permutation_equivariant(small(), in_dim=3)


def test_latents_start_standard_normal_and_skip_weight_decay():
    torch.manual_seed(0)
    model = PerceiverIO(in_dim=3, out_dim=1)
    assert model.encoder.latents.std().item() == pytest.approx(1.0, rel=0.05)
    exempt = model.no_weight_decay()
    assert "encoder.latents" in exempt and "blocks.0.norm1.weight" in exempt
    assert "blocks.0.qkv.weight" not in exempt


def test_bad_sizes_are_reported():
    with pytest.raises(ValueError, match="channels \\(128\\) must be divisible by num_heads \\(3\\)"):
        PerceiverIO(in_dim=3, out_dim=1, num_heads=3)
    with pytest.raises(ValueError, match="expects 3 input channels, got 2"):
        small()(torch.randn(1, 5, 2, dtype=torch.float64))
