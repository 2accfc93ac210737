"""Full-resolution evaluation in chunks of points: the encode is a sum over points, so
per-chunk partial sums merged by log-sum-exp give the unchunked model's output."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.models import FLARE


def model(**kwargs) -> FLARE:
    torch.manual_seed(0)
    net = FLARE(3, 2, channels=16, num_blocks=2, num_heads=4, num_latents=8, mixer_backend="explicit", **kwargs)
    return net.double().eval()


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 16, 50])
def test_chunked_forward_equals_unchunked(chunk, masked):
    torch.manual_seed(2)
    x = torch.randn(3, 41, 3, dtype=torch.float64)
    mask = None
    if masked:
        mask = torch.ones(3, 41, dtype=torch.bool)
        mask[1, 30:] = False
        mask[2, 9:] = False  # whole chunks of padding when chunk < 32
    net = model()
    with torch.no_grad():
        ref = net(x, mask)
        out = net.forward_chunked(x, mask, chunk)
    keep = slice(None) if mask is None else mask
    torch.testing.assert_close(out[keep], ref[keep], rtol=1e-11, atol=1e-12)


def test_eval_chunk_size_applies_without_autograd_only():
    torch.manual_seed(3)
    x = torch.randn(2, 40, 3, dtype=torch.float64)
    plain, chunked = model(), model(eval_chunk_size=6)
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), plain(x), rtol=1e-11, atol=1e-12)
    # with autograd the ordinary (trainable) path runs
    out = chunked(x)
    assert out.requires_grad
    torch.testing.assert_close(out, plain(x), rtol=0, atol=0)


def test_chunked_result_does_not_depend_on_padding():
    torch.manual_seed(4)
    x = torch.randn(1, 20, 3, dtype=torch.float64)
    padded = torch.cat([x, torch.randn(1, 13, 3, dtype=torch.float64)], dim=1)
    mask = torch.zeros(1, 33, dtype=torch.bool)
    mask[:, :20] = True
    net = model()
    with torch.no_grad():
        alone = net.forward_chunked(x, None, 8)
        inside = net.forward_chunked(padded, mask, 8)
    torch.testing.assert_close(inside[:, :20], alone, rtol=1e-11, atol=1e-12)


def test_chunked_forward_under_bf16_autocast_is_close():
    torch.manual_seed(5)
    net = FLARE(3, 1, channels=16, num_blocks=2, num_heads=4, num_latents=8).eval()
    x = torch.randn(2, 64, 3)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net.forward_chunked(x, None, 16)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 3e-2
