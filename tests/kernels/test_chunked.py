"""Chunked two-SDPA mixer against the float64 explicit formula."""

from __future__ import annotations

import functools

import pytest
import torch

from flare_lightning.kernels.chunked import flare_mix_chunked
from flare_lightning.kernels.reference import flare_mix_explicit
from tests.kernels.conftest import HAS_CUDA, assert_close_errors, mixer_errors

# (B, H, N, M, D, masked, scale, chunk): chunks that divide N, and ones that force padding.
CASES = [
    (2, 2, 300, 32, 8, True, 1.0, 64),
    (1, 4, 256, 64, 16, False, 1.0, 64),
    (3, 2, 130, 24, 32, True, 0.25, 1000),
    (2, 1, 77, 16, 4, False, 2.0, 10),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}N{}M{}D{}{}s{}c{}".format(*c[:5], "mask" if c[5] else "", *c[6:]))
def test_matches_explicit(case, dtype):
    b, h, n, m, d, masked, scale, chunk = case
    fn = functools.partial(flare_mix_chunked, chunk_size=chunk)
    errors = mixer_errors(fn, b, h, n, m, d, dtype, torch.device("cpu"), masked, scale, seed=n + chunk)
    assert_close_errors(errors, dtype, f"chunked {case}")


@pytest.mark.parametrize("chunk", [32, 50])
def test_model_layout(chunk):
    """k, v viewed from [B, N, H, D] storage fold over the batch dimension instead."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 200, 3, 8, generator=g, dtype=torch.float64).transpose(1, 2)
    v = torch.randn(2, 200, 3, 8, generator=g, dtype=torch.float64).transpose(1, 2)
    q = torch.randn(3, 16, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(flare_mix_chunked(q, k, v, None, 1.0, chunk), flare_mix_explicit(q, k, v, None, 1.0))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("masked", [False, True])
def test_matches_explicit_gpu(dtype, masked):
    errors = mixer_errors(flare_mix_chunked, 2, 8, 50_000, 128, 16, dtype, torch.device("cuda"), masked, 1.0)
    assert_close_errors(errors, dtype, "chunked gpu")
