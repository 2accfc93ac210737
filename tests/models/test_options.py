"""Degenerate model options fail at construction, naming the option and what was expected."""

from __future__ import annotations

import pytest

from flare_lightning.models import FLARE, FlareAttention, ResidualMLP

GOOD = dict(in_dim=2, out_dim=1, channels=8, num_blocks=1, num_heads=2, num_latents=4)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("num_latents", 0, "num_latents must be a positive integer, got 0"),
        ("num_blocks", 0, "num_blocks must be a positive integer, got 0"),
        ("num_heads", 0, "num_heads must be a positive integer, got 0"),
        ("channels", -8, "channels must be a positive integer, got -8"),
        ("in_dim", 0, "in_dim must be a positive integer"),
        ("num_heads", 3, r"channels \(8\) must be divisible by num_heads \(3\)"),
        ("kv_layers", -1, "kv_layers must be an integer >= 0, got -1"),
        ("mlp_ratio", 0.0, "mlp_ratio must be a finite positive number"),
        ("mlp_chunk_size", 0, "mlp_chunk_size must be a positive integer"),
        ("mixer_backend", "fast", "mixer_backend must be one of"),
        ("num_latents", 2.5, "num_latents must be a positive integer, got 2.5"),
    ],
)
def test_flare_rejects_degenerate_options(option, value, message):
    with pytest.raises(ValueError, match=rf"FLARE|FlareAttention") as err:
        FLARE(**{**GOOD, option: value})
    assert err.match(message)


def test_attention_and_mlp_reject_degenerate_options():
    with pytest.raises(ValueError, match="FlareAttention: num_latents must be a positive integer, got 0"):
        FlareAttention(channels=8, num_heads=2, num_latents=0)
    with pytest.raises(ValueError, match="FlareAttention: num_heads must be a positive integer, got 0"):
        FlareAttention(channels=8, num_heads=0, num_latents=4)  # was a ZeroDivisionError
    with pytest.raises(ValueError, match="ResidualMLP: hidden_dim must be a positive integer, got 0"):
        ResidualMLP(2, 0, 1)
    with pytest.raises(ValueError, match="ResidualMLP: num_layers must be an integer >= 0, got -2"):
        ResidualMLP(2, 4, 1, num_layers=-2)


def test_valid_edge_sizes_still_build():
    FLARE(**{**GOOD, "num_heads": 8, "kv_layers": 0, "ffn_layers": 0, "io_layers": 0})
    ResidualMLP(1, 1, 1, num_layers=0)


def test_removed_fuse_kv_option_reads_old_configs_and_refuses_true():
    """Every config saved before fuse_kv was removed holds ``fuse_kv: false``: it still builds."""
    assert FLARE(**GOOD, fuse_kv=False).out_dim == 1
    with pytest.raises(ValueError, match="FLARE: fuse_kv was removed"):
        FLARE(**GOOD, fuse_kv=True)
