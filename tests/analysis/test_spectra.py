"""Spectra of W_dec W_enc through M x M matrices against brute-force N x N linear algebra."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.analysis import (
    analyse_mixers,
    capture_keys,
    effective_rank,
    mixing_eigenvalues,
    mixing_singular_values,
)
from flare_lightning.kernels.reference import flare_weights
from flare_lightning.models import FLARE


def random_weights(batch: int, heads: int, latents: int, points: int, mask: bool, seed: int):
    """Encode/decode weights of random latents and keys (logits of order 1), with an
    optional mask that pads the later samples to different lengths."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(heads, latents, 4, generator=g, dtype=torch.float64)
    k = torch.randn(batch, heads, points, 4, generator=g, dtype=torch.float64)
    m = None
    if mask:
        m = torch.ones(batch, points, dtype=torch.bool)
        for b in range(1, batch):
            m[b, points - 3 * b :] = False
    w_enc, w_dec = flare_weights(q, k, m)
    return w_enc, w_dec, m


def dense_mixing(w_enc, w_dec, mask, b: int, h: int) -> torch.Tensor:
    """The N x N mixing of sample b, head h, on its real points."""
    real = mask[b] if mask is not None else torch.ones(w_enc.shape[-1], dtype=torch.bool)
    return w_dec[b, h][real] @ w_enc[b, h][:, real]


def match_eigenvalues(ours: torch.Tensor, brute: torch.Tensor, atol: float) -> None:
    """Every eigenvalue of one list has a partner in the other within atol."""
    dist = (ours[:, None] - brute[None, :]).abs()
    assert dist.min(1).values.max() < atol
    assert dist.min(0).values.max() < atol


@pytest.mark.parametrize("mask", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("points,latents", [(20, 6), (9, 12)], ids=["N>M", "N<M"])
def test_eigenvalues_match_dense(points, latents, mask):
    w_enc, w_dec, m = random_weights(3, 2, latents, points, mask, seed=points + latents)
    eig = mixing_eigenvalues(w_enc, w_dec, m)  # [B, H, M]
    assert eig.shape == (3, 2, latents) and eig.dtype == torch.complex128
    assert torch.all(eig.abs()[..., :-1] >= eig.abs()[..., 1:] - 1e-12)  # sorted by magnitude
    for b in range(3):
        for h in range(2):
            dense = torch.linalg.eigvals(dense_mixing(w_enc, w_dec, m, b, h))
            n = dense.shape[0]
            top = dense[dense.abs().argsort(descending=True)][: min(n, latents)]
            match_eigenvalues(eig[b, h, : min(n, latents)], top, atol=1e-7)
            assert torch.all(eig[b, h, n:].abs() < 1e-12)  # beyond n: exact zeros


@pytest.mark.parametrize("mask", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("points,latents", [(20, 6), (9, 12)], ids=["N>M", "N<M"])
def test_singular_values_match_dense(points, latents, mask):
    w_enc, w_dec, m = random_weights(3, 2, latents, points, mask, seed=7 * points + latents)
    sv = mixing_singular_values(w_enc, w_dec, m)
    assert sv.shape == (3, 2, latents)
    for b in range(3):
        for h in range(2):
            dense = torch.linalg.svdvals(dense_mixing(w_enc, w_dec, m, b, h))
            k = min(dense.shape[0], latents)
            torch.testing.assert_close(sv[b, h, :k], dense[:k], atol=1e-10, rtol=1e-8)
            assert torch.all(sv[b, h, k:].abs() < 1e-12)


def test_leading_eigenvalue_is_one_and_all_in_unit_disc():
    w_enc, w_dec, m = random_weights(4, 3, 16, 40, True, seed=3)
    eig = mixing_eigenvalues(w_enc, w_dec, m)
    torch.testing.assert_close(eig[..., 0], torch.ones_like(eig[..., 0]), atol=1e-10, rtol=0)
    assert eig.abs().max() <= 1 + 1e-10
    assert eig.abs()[..., 1].max() < 1 - 1e-3  # random heads are not permutations


def test_large_n_never_forms_the_dense_mixing():
    # N x N in float64 would need 80 GB here; the M x M route needs a few MB.
    w_enc, w_dec, _ = random_weights(1, 1, 4, 100_000, False, seed=0)
    sv = mixing_singular_values(w_enc, w_dec)
    eig = mixing_eigenvalues(w_enc, w_dec)
    assert sv.shape == eig.shape == (1, 1, 4) and torch.isfinite(sv).all()


def test_effective_rank_limits():
    flat = torch.ones(2, 8, dtype=torch.float64)
    spike = torch.zeros(8, dtype=torch.float64)
    spike[0] = 3.0
    torch.testing.assert_close(effective_rank(flat), torch.full((2,), 8.0, dtype=torch.float64))
    torch.testing.assert_close(effective_rank(spike), torch.tensor(1.0, dtype=torch.float64))
    between = effective_rank(torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64))
    assert 1.0 < between < 3.0


def small_flare(dtype=torch.float32) -> FLARE:
    torch.manual_seed(0)
    model = FLARE(3, 1, channels=16, num_blocks=2, num_heads=2, num_latents=8, mixer_backend="explicit")
    for name, p in model.named_parameters():  # sharper attention than the init's near-uniform one
        if name.endswith("latents"):
            p.data.mul_(20)
    return model.to(dtype)


def test_padding_does_not_change_a_samples_analysis():
    model = small_flare()
    x = torch.randn(2, 30, 3)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 21:] = False
    padded = analyse_mixers(model, x, mask)
    alone = analyse_mixers(model, x[1:, :21], None)
    for p, a in zip(padded, alone):
        torch.testing.assert_close(p.singular_values[1], a.singular_values[0])
        torch.testing.assert_close(p.eigenvalues[1].abs(), a.eigenvalues[0].abs())
        torch.testing.assert_close(p.diversity_mixing[1], a.diversity_mixing[0])
    assert not torch.allclose(padded[0].singular_values[0], padded[0].singular_values[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_is_analysed_in_float64(dtype):
    model = small_flare(dtype)
    x = torch.randn(2, 25, 3, dtype=dtype)
    keys = capture_keys(model, x)
    assert len(keys) == 2 and keys[0].keys.dtype == dtype
    for block in analyse_mixers(model, x):
        assert block.singular_values.dtype == torch.float64 and torch.isfinite(block.singular_values).all()
        # fp64 softmaxes keep the stochastic structure exact even with half-precision keys
        torch.testing.assert_close(block.eigenvalues[..., 0].abs(), torch.ones(2, 2, dtype=torch.float64))
    reference = analyse_mixers(small_flare(torch.float32), x.float())
    assert torch.allclose(reference[0].effective_rank, analyse_mixers(model, x)[0].effective_rank, rtol=0.1)
