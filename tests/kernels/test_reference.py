"""The reference mixers: explicit weights' properties, and SDPA against float64 explicit."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.kernels.reference import check_mixer_inputs, flare_mix_explicit, flare_mix_sdpa, flare_weights
from tests.kernels.conftest import HAS_CUDA, assert_close_errors, mixer_errors, random_mixer_inputs

# (B, H, N, M, D, masked, scale)
CASES = [
    (2, 2, 300, 32, 8, True, 1.0),
    (1, 4, 257, 64, 16, False, 1.0),
    (3, 2, 128, 24, 32, True, 0.25),
]
GPU_CASES = [
    (2, 8, 20_000, 64, 8, False, 1.0),
    (2, 8, 20_000, 128, 16, True, 1.0),
    (1, 16, 8192, 256, 16, False, 1.0),
]


def _ids(c):
    return "B{}H{}N{}M{}D{}{}s{}".format(*c[:5], "mask" if c[5] else "", c[6])


@pytest.mark.parametrize("masked", [False, True])
def test_weights_are_softmaxes(masked):
    q, k, _, _, mask = random_mixer_inputs(2, 2, 50, 12, 8, masked, seed=0)
    w_enc, w_dec = flare_weights(q, k, mask, 1.0)
    assert w_enc.shape == (2, 2, 12, 50) and w_dec.shape == (2, 2, 50, 12)
    torch.testing.assert_close(w_enc.sum(-1), torch.ones(2, 2, 12, dtype=torch.float64))
    torch.testing.assert_close(w_dec.sum(-1), torch.ones(2, 2, 50, dtype=torch.float64))
    if masked:
        assert (w_enc.masked_select(~mask[:, None, None, :]) == 0).all()
    mixing = w_dec @ w_enc  # [B, H, N, N], row-stochastic
    torch.testing.assert_close(mixing.sum(-1), torch.ones(2, 2, 50, dtype=torch.float64))


def test_explicit_ignores_padding():
    q, k, v, _, _ = random_mixer_inputs(1, 2, 40, 12, 8, False, seed=1)
    y = flare_mix_explicit(q, k, v, None, 1.0)
    pad = torch.randn(1, 2, 9, 8, dtype=torch.float64) * 50
    mask = (torch.arange(49) < 40)[None]
    y_pad = flare_mix_explicit(q, torch.cat([k, pad], 2), torch.cat([v, -pad], 2), mask, 1.0)
    torch.testing.assert_close(y_pad[:, :, :40], y)


def test_check_inputs_names_the_problem():
    q = torch.randn(2, 8, 4)
    k = torch.randn(1, 2, 10, 4)
    with pytest.raises(ValueError, match="q"):
        check_mixer_inputs(torch.randn(3, 8, 4), k, k, None)
    with pytest.raises(ValueError, match="mask"):
        check_mixer_inputs(q, k, k, torch.ones(1, 10))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_sdpa_matches_explicit_cpu(case, dtype):
    b, h, n, m, d, masked, scale = case
    errors = mixer_errors(flare_mix_sdpa, b, h, n, m, d, dtype, torch.device("cpu"), masked, scale, seed=n)
    assert_close_errors(errors, dtype, f"sdpa {case}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=_ids)
def test_fused_sdpa_matches_explicit_gpu(case, dtype):
    """Half precision without a mask runs the flash backend (forced in flare_mix_sdpa)."""
    b, h, n, m, d, masked, scale = case
    errors = mixer_errors(flare_mix_sdpa, b, h, n, m, d, dtype, torch.device("cuda"), masked, scale, seed=n)
    assert_close_errors(errors, dtype, f"sdpa gpu {case}")
