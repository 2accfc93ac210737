"""Shared checks of the model interface: padded points never influence real ones, and a
sample's output depends neither on its batch-mates nor on the amount of padding."""

from __future__ import annotations

import torch
from torch import nn


def padded_batch(samples: list[torch.Tensor], n_max: int, garbage: float = 1e2) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples [N_i, d] -> batch [B, n_max, d] with random garbage in the padding, and its mask."""
    d = samples[0].shape[-1]
    x = garbage * torch.randn(len(samples), n_max, d, dtype=samples[0].dtype)
    mask = torch.zeros(len(samples), n_max, dtype=torch.bool)
    for i, s in enumerate(samples):
        x[i, : len(s)] = s
        mask[i, : len(s)] = True
    return x, mask


def assert_padding_and_batch_invariant(model: nn.Module, in_dim: int, sizes=(30, 47, 12)) -> None:
    """Each sample run alone (no mask) equals its rows in two padded batches of different
    widths and different batch-mates (float64, fresh random inputs)."""
    samples = [torch.randn(n, in_dim, dtype=torch.float64) for n in sizes]
    alone = [model(s[None])[0] for s in samples]
    x, mask = padded_batch(samples, max(sizes))
    wide, wide_mask = padded_batch(samples[::-1], max(sizes) + 23)
    out, out_wide = model(x, mask), model(wide, wide_mask)
    for i, s in enumerate(samples):
        n = len(s)
        torch.testing.assert_close(out[i, :n], alone[i], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out_wide[len(samples) - 1 - i, :n], alone[i], rtol=1e-10, atol=1e-10)
    assert torch.isfinite(out[mask]).all()
    # An all-True mask and no mask are the same computation (the module drops the mask of
    # batches without padding, so attention can run its unmasked kernels).
    full = torch.randn(2, max(sizes), in_dim, dtype=torch.float64)
    ones = torch.ones(2, max(sizes), dtype=torch.bool)
    torch.testing.assert_close(model(full, ones), model(full, None), rtol=1e-12, atol=1e-12)


def assert_permutation_equivariant(model: nn.Module, in_dim: int, n: int = 40) -> None:
    """Reordering the points reorders the outputs (float64)."""
    x = torch.randn(2, n, in_dim, dtype=torch.float64)
    perm = torch.randperm(n)
    torch.testing.assert_close(model(x[:, perm]), model(x)[:, perm], rtol=1e-10, atol=1e-10)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
