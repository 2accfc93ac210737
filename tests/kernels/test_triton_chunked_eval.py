"""Evaluation over point chunks on the Triton mixer: the encode alone (z and its log-sum-exp) and
the decode alone against float64 formulas, chunk results merged exactly, and a FLARE model's
chunked evaluation equal to its whole forward with no [M, n] logits built. Interpreted kernels
without CUDA; on a GPU (scripts/gpu_tests.sh) the compiled kernels and a bf16 model at scale."""

from __future__ import annotations

import math

import pytest
import torch

from flare_lightning.kernels import mixer_math
from flare_lightning.kernels.mixer_math import merge_stats, normalised_stats
from flare_lightning.kernels.reference import flare_weights
from tests.kernels.conftest import HAS_CUDA, random_mixer_inputs

pytest.importorskip("triton")


def reference_encode(q, k, v, mask, scale):
    """float64 z [B, H, M, D] and its base-2 log-sum-exp over the real points [B, H, M]."""
    logits = mixer_math.mask_keys(mixer_math.latent_logits(q, k, scale), mask)
    w_enc, _ = flare_weights(q, k, mask, scale)
    return w_enc @ v, torch.logsumexp(logits, dim=-1) / math.log(2.0)


def rel(a, b) -> float:
    return ((a.double().cpu() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("scale", [1.0, 0.4, -0.7])
def test_encode_and_decode_alone_match_float64(tm, device, dtype, tol, scale):
    q, k, v, _, mask = random_mixer_inputs(2, 3, 70, 24, 8, True, seed=11)
    z_ref, lse_ref = reference_encode(q, k, v, mask, scale)
    ins = [t.to(device=device, dtype=dtype) for t in (q, k, v)]
    z, lse = tm.flare_encode_triton(*ins, mask.to(device), scale)
    assert z.dtype == lse.dtype == torch.float32 and z.shape == z_ref.shape and lse.shape == lse_ref.shape
    # the reference sees the inputs as the kernels do (rounded to dtype)
    z_ref, lse_ref = reference_encode(*(t.double().cpu() for t in ins), mask, scale)
    assert rel(z, z_ref) < tol
    assert (lse.double().cpu() - lse_ref).abs().max().item() < 50 * tol
    _, w_dec = flare_weights(*(t.double().cpu() for t in ins[:2]), None, scale)
    y = tm.flare_decode_triton(ins[0], z_ref.to(device), ins[1], scale)
    assert y.dtype == dtype and y.shape == k.shape
    assert rel(y, w_dec @ z_ref.to(dtype).double()) < tol  # z goes to the kernels in k's dtype


def test_chunks_merge_to_the_whole_encode(tm, device):
    """Three chunks (one of them all padding) merge by log-sum-exp to the whole sample's z."""
    q, k, v, _, _ = random_mixer_inputs(2, 2, 90, 20, 8, False, seed=12)
    mask = torch.ones(2, 90, dtype=torch.bool)
    mask[1, 40:] = False  # sample 1's last chunks hold padding only
    z_ref, _ = reference_encode(q, k, v, mask, 1.0)
    parts = []
    for lo, hi in ((0, 35), (35, 60), (60, 90)):
        ins = [t.float().to(device) for t in (q, k[:, :, lo:hi], v[:, :, lo:hi])]
        parts.append(normalised_stats(*tm.flare_encode_triton(*ins, mask[:, lo:hi].to(device), 1.0)))
    m, l, acc = parts[2]
    assert torch.isinf(m[1]).all() and (l[1] == 0).all() and (acc[1] == 0).all()  # no real point there
    m, l, acc = merge_stats(tuple(torch.stack(p) for p in zip(*parts)))
    assert rel(acc / l[..., None], z_ref) < 1e-5


def test_normalised_stats_merge_with_plain_statistics():
    """A Triton-style normalised part and a plain (m, l, acc) part join exactly (float64)."""
    q, k, v, _, _ = random_mixer_inputs(1, 2, 50, 12, 4, False, seed=13)
    z_ref, _ = reference_encode(q, k, v, None, 0.8)
    z_a, lse_a = reference_encode(q, k[:, :, :20], v[:, :, :20], None, 0.8)
    plain_b = mixer_math.encode_stats(mixer_math.latent_logits(q, k[:, :, 20:], 0.8), v[:, :, 20:])
    m, l, acc = merge_stats(tuple(torch.stack(p) for p in zip(normalised_stats(z_a, lse_a), plain_b)))
    torch.testing.assert_close(acc / l[..., None], z_ref, rtol=1e-12, atol=1e-12)


def flare(**kwargs):
    from flare_lightning.models import FLARE

    torch.manual_seed(0)
    return FLARE(3, 2, channels=16, num_blocks=2, num_heads=4, num_latents=12, mixer_backend="triton", **kwargs)


@pytest.mark.parametrize("chunk", [9, 20])
def test_flare_chunked_evaluation_runs_the_triton_mixer_and_equals_the_forward(tm, device, monkeypatch, chunk):
    net = flare(mlp_backend="torch").to(device).eval()
    x = torch.randn(2, 45, 3, device=device)
    mask = (torch.arange(45)[None, :] < torch.tensor([[45], [29]])).to(device)
    with torch.no_grad():
        whole = net(x, mask)
        # the plain statistics would build [M, n] logits: the Triton path must not need them
        monkeypatch.setattr("flare_lightning.models.attention.latent_logits", None)
        chunked = net.forward_chunked(x, mask, chunk)
    rows = mask[..., None].cpu()
    assert ((chunked.cpu() - whole.cpu()) * rows).norm() / (whole.cpu() * rows).norm() < 1e-5


@pytest.mark.skipif(not HAS_CUDA, reason="bf16 at 2^18 points needs the compiled kernels (CUDA)")
def test_bf16_chunked_evaluation_at_scale_matches_the_forward_in_bounded_memory(tm):
    """The DrivAerML-1M shape at 2^18 points in chunks of 2^16: equal to the whole bf16 forward
    to its rounding, and the peak above the model's [N, C] stream stays far below the [M, n]
    float32 logits of one chunk per head that the plain statistics would build."""
    from flare_lightning.models import FLARE

    torch.manual_seed(0)
    n, chunk = 2**18, 2**16
    net = FLARE(3, 1, channels=64, num_blocks=2, num_heads=8, num_latents=256).cuda().eval()
    x = torch.randn(1, n, 3, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        whole = net(x).float()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        chunked = net.forward_chunked(x, None, chunk).float()
        peak = torch.cuda.max_memory_allocated() - base
    assert (chunked - whole).norm() / whole.norm() < 2e-2
    logits_bytes = 8 * 256 * chunk * 4  # one chunk's float32 logits, all heads
    assert peak < logits_bytes, f"peak {peak / 2**20:.0f} MiB, one chunk's logits {logits_bytes / 2**20:.0f} MiB"


def test_bad_inputs_are_refused_naming_the_function_and_shape(tm, device):
    q, k, v = (torch.randn(*s, device=device) for s in ((2, 8, 4), (1, 2, 10, 4), (1, 2, 10, 4)))
    with pytest.raises(ValueError, match=r"flare_decode_triton: z must be \[B, H, M, D\] = \[1, 2, 8, 4\]"):
        tm.flare_decode_triton(q, torch.zeros(1, 2, 7, 4, device=device), k)
    with pytest.raises(TypeError, match="flare_encode_triton: q, k, v must share one dtype"):
        tm.flare_encode_triton(q, k, v.to(torch.bfloat16))
    with pytest.raises(TypeError, match="flare_decode_triton: dtype must be float32, bfloat16 or float16"):
        tm.flare_decode_triton(q.double(), torch.zeros(1, 2, 8, 4, device=device), k.double())
