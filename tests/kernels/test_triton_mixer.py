"""Fused Triton mixer against the float64 explicit formula.

Without CUDA the kernels run under ``TRITON_INTERPRET=1`` (see conftest.py) at small
sizes, with tiles small enough that every code path runs: several point tiles per chunk,
several chunks (log-sum-exp merge), several latent tiles (online softmax over M, atomic
dq partials), padded D and M, masks with uneven lengths. On a GPU the same checks run at
full speed and larger sizes.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.kernels.conftest import HAS_CUDA, assert_close_errors, float32_matmul_precision, mixer_errors, needs_tf32

pytest.importorskip("triton")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (B, H, N, M, D, masked, scale): non-power-of-two M and D, D from 4 to 64, B > 1.
SMALL_CASES = [
    (2, 2, 100, 40, 8, True, 1.0),
    (1, 1, 64, 16, 4, False, 1.0),
    (2, 3, 77, 24, 12, True, 0.3),
    (3, 2, 50, 64, 16, True, 2.0),
    (1, 2, 40, 20, 64, False, 0.125),
]

GPU_CASES = [
    (2, 4, 5000, 64, 8, True, 1.0),
    (1, 8, 70_000, 128, 16, False, 1.0),
    (2, 16, 4096, 256, 16, True, 1.0),
    (1, 2, 20_000, 512, 16, True, 1.0),
    (2, 2, 3000, 2048, 64, True, 0.125),
    (3, 1, 1000, 16, 4, True, 1.0),
]


def _small_config(tm, programs_per_sm=1):
    tile = tm.KernelConfig(block_n=16, block_m=16)
    return tm.MixerConfig(tile, tile, tile, tile, programs_per_sm=programs_per_sm)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SMALL_CASES, ids=lambda c: "B{}H{}N{}M{}D{}{}s{}".format(*c[:5], "mask" if c[5] else "", c[6]))
def test_matches_explicit(tm, device, case, dtype):
    b, h, n, m, d, masked, scale = case
    errors = mixer_errors(tm.flare_mix_triton, b, h, n, m, d, dtype, device, masked, scale, seed=n * m + d)
    assert_close_errors(errors, dtype, f"triton {case}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_many_chunks_and_tiles(tm, device, dtype):
    """16-wide tiles and many programs: 7 point tiles over 4+ chunks, 3 latent tiles."""
    cfg = _small_config(tm, programs_per_sm=8)

    def fn(q, k, v, mask, scale):
        return tm.flare_mix_triton(q, k, v, mask, scale, config=cfg)

    errors = mixer_errors(fn, 2, 1, 100, 40, 8, dtype, device, True, 1.0, seed=3)
    assert_close_errors(errors, dtype, "triton small tiles")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", SMALL_CASES[:4], ids=lambda c: "B{}H{}N{}M{}D{}{}s{}".format(*c[:5], "mask" if c[5] else "", c[6]))
def test_backward_decode_with_latent_rows(tm, device, case, dtype):
    """The backward decode's [BM, BN] orientation (``KernelConfig.latent_rows``): one latent tile
    (M = 16) and several, M not a multiple of the tile, masks, against the float64 formula."""
    tile = tm.KernelConfig(block_n=16, block_m=16)
    cfg = tm.MixerConfig(tile, tile, tm.KernelConfig(block_n=16, block_m=16, latent_rows=True), tile, programs_per_sm=2)

    def fn(q, k, v, mask, scale):
        return tm.flare_mix_triton(q, k, v, mask, scale, config=cfg)

    b, h, n, m, d, masked, scale = case
    errors = mixer_errors(fn, b, h, n, m, d, dtype, device, masked, scale, seed=n + m + d)
    assert_close_errors(errors, dtype, f"latent rows {case}")


@pytest.mark.parametrize("groups, rows", [(2, False), (3, False), (3, True), (8, False)], ids=lambda g: str(g))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_decode_with_latent_groups(tm, device, groups, rows, dtype):
    """The backward decode with its latents split over programs (``KernelConfig.latent_groups``):
    M = 40 in three 16-latent tiles as groups of two tiles and one (atomics within a group), of
    one tile each (registers), and more groups asked for than there are tiles; each group's
    share of dk summed by the encode side. Masked, several chunks, against the float64 formula."""
    tile = tm.KernelConfig(block_n=16, block_m=16)
    grouped = tm.KernelConfig(block_n=16, block_m=16, latent_rows=rows, latent_groups=groups)
    cfg = tm.MixerConfig(tile, tile, grouped, tile, programs_per_sm=4)

    def fn(q, k, v, mask, scale):
        return tm.flare_mix_triton(q, k, v, mask, scale, config=cfg)

    errors = mixer_errors(fn, 2, 2, 100, 40, 8, dtype, device, True, 0.7, seed=groups)
    assert_close_errors(errors, dtype, f"{groups} latent groups")


@pytest.mark.parametrize("name, m", [("grouped_decode_config", 256), ("encode128_config", 128)])
def test_tiles_the_step_benchmark_times(tm, device, monkeypatch, name, m):
    """Candidate tiles that ``benchmarks/train_step_small.py`` times in the whole 1M step (rows
    ``ours-fast-grouped``, ``ours-m128-fast-enc128``), through the override the custom ops read:
    what they change, and the mixer with them against the float64 formula."""
    from tests.helpers import import_benchmark

    candidate = getattr(import_benchmark("train_step_small"), name)
    monkeypatch.setattr(tm, "INTERPRETED", False)  # the GPU's tiles, also under the interpreter
    cfg, shipped = candidate(m, 8, torch.bfloat16), tm.default_config(m, 8, torch.bfloat16)
    monkeypatch.undo()
    changed = {f for f in ("encode", "decode", "bwd_decode", "bwd_encode") if getattr(cfg, f) != getattr(shipped, f)}
    assert changed == ({"bwd_decode"} if m == 256 else {"bwd_encode"})
    assert cfg.bwd_decode.latent_groups == (2 if m == 256 else 1) and cfg.bwd_encode.block_m == (128 if m == 128 else 64)
    monkeypatch.setattr(tm, "CONFIG_OVERRIDE", lambda m_, d_, dtype: cfg)
    assert tm.launch_config(m, 8, torch.bfloat16) is cfg

    def fn(q, k, v, mask, scale):
        return tm.flare_mix_triton(q, k, v, mask, scale, config=tm.launch_config(m, 8))

    errors = mixer_errors(fn, 1, 1, 300, m, 8, torch.float32, device, True, 1.0, seed=m + 1)
    assert_close_errors(errors, torch.float32, f"{name} at M = {m}")


def test_latent_groups_cover_the_tiles_once(tm):
    """Groups are runs of whole latent tiles, none empty, however many are asked for."""
    k = lambda g: tm.KernelConfig(block_n=64, block_m=64, latent_groups=g)  # noqa: E731
    assert tm._latent_groups(256, k(1)) == (4, 1)
    assert tm._latent_groups(256, k(2)) == (2, 2)
    assert tm._latent_groups(256, k(3)) == (2, 2)  # 4 tiles in runs of 2: two groups, not an empty third
    assert tm._latent_groups(256, k(4)) == (1, 4)
    assert tm._latent_groups(200, k(16)) == (1, 4)
    with pytest.raises(ValueError, match="latent_groups"):
        tm._latent_groups(256, k(0))


@pytest.mark.parametrize("m", [256, 128, 512], ids=lambda m: f"M{m}")
def test_gpu_default_tiles_of_the_1m_heads(tm, device, monkeypatch, m):
    """The tiles ``default_config`` picks on a GPU for the 1M config's heads (D = 8; at M = 256,
    128-point decode tiles over four latent tiles, measured there only), run as they are (interpreted
    without CUDA)."""
    monkeypatch.setattr(tm, "INTERPRETED", False)  # the GPU's choice, also under the interpreter
    cfg = tm.default_config(m, 8, torch.bfloat16)
    monkeypatch.undo()
    assert cfg.decode.block_n == (128 if m == 256 else 64)

    def fn(q, k, v, mask, scale):
        return tm.flare_mix_triton(q, k, v, mask, scale, config=cfg)

    errors = mixer_errors(fn, 1, 1, 300, m, 8, torch.float32, device, True, 1.0, seed=m)
    assert_close_errors(errors, torch.float32, f"GPU default tiles at M = {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_negative_scale(tm, device, dtype):
    """The kernels take a positive scale; a negative one runs as |s| with q negated."""
    errors = mixer_errors(tm.flare_mix_triton, 2, 2, 70, 24, 8, dtype, device, True, -0.7, seed=5)
    assert_close_errors(errors, dtype, "triton negative scale")


@pytest.mark.filterwarnings("ignore:overflow encountered in exp2")
@pytest.mark.parametrize("scale", [0.3, 0.7, 1.0])
def test_masked_chunks_and_empty_samples(tm, device, scale):
    """A sample whose last point tiles are all masked matches the reference, and a sample
    with no real point gives finite outputs and gradients. (On the GPU a finite sentinel
    for masked logits once turned whole samples into NaN through the scaling FMA.)"""
    from flare_lightning.kernels.reference import flare_mix_explicit

    g = torch.Generator().manual_seed(6)
    b, h, n, m, d = 3, 2, 70, 24, 8
    q = torch.randn(h, m, d, generator=g, dtype=torch.float64)
    k, v, dy = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(3))
    mask = (torch.arange(n)[None] < torch.tensor([[n], [45], [0]])).to(device)
    dy = dy.to(device) * mask[:, None, :, None]
    ins = [t.to(device=device, dtype=torch.float32).requires_grad_() for t in (q, k, v)]
    y = tm.flare_mix_triton(*ins, mask, scale)
    grads = torch.autograd.grad(y, ins, dy.float())
    assert torch.isfinite(y).all() and all(torch.isfinite(gr).all() for gr in grads)
    ref = [t.detach().double().requires_grad_() for t in ins]
    y_ref = flare_mix_explicit(ref[0], ref[1][:2], ref[2][:2], mask[:2], scale)  # the empty sample has no reference
    dq_ref, dk_ref, dv_ref = torch.autograd.grad(y_ref, ref, dy[:2], allow_unused=True)
    rows = mask[:2, None, :, None]
    assert ((y[:2] - y_ref) * rows).norm() / (y_ref * rows).norm() < 1e-4
    assert (grads[0] - dq_ref).norm() / dq_ref.norm() < 1e-4  # the empty sample adds nothing to dq
    assert (grads[1][:2] - dk_ref[:2]).norm() / dk_ref[:2].norm() < 1e-4
    assert (grads[2][:2] - dv_ref[:2]).norm() / dv_ref[:2].norm() < 1e-4


def test_zero_scale(tm, device):
    """Scale 0: every logit is 0, so y is the mean of v over real points, and dq = dk = 0."""
    g = torch.Generator().manual_seed(4)
    b, h, n, m, d = 2, 2, 50, 24, 8
    q = torch.randn(h, m, d, generator=g).to(device).requires_grad_()
    k, v = (torch.randn(b, h, n, d, generator=g).to(device).requires_grad_() for _ in range(2))
    mask = (torch.arange(n)[None] < torch.tensor([[n], [31]])).to(device)
    y = tm.flare_mix_triton(q, k, v, mask, 0.0)
    dq, dk, dv = torch.autograd.grad(y[mask[:, None, :, None].expand_as(y)].sum(), (q, k, v))
    w = mask[:, None, :, None].float()
    mean = (v * w).sum(2, keepdim=True) / w.sum(2, keepdim=True)
    assert torch.allclose(y * w, mean.expand_as(y) * w, atol=1e-5)
    assert dq.abs().max() == 0 and dk.abs().max() == 0
    assert torch.allclose(dv, w.expand_as(dv), atol=1e-5)  # |real| outputs, each 1/|real| of every real v


def test_model_layout_strides(tm, device):
    """k, v as the model passes them: [B, N, H, D] storage viewed as [B, H, N, D]."""
    from flare_lightning.kernels.reference import flare_mix_explicit

    g = torch.Generator().manual_seed(1)
    b, h, n, m, d = 2, 2, 90, 24, 8
    k = torch.randn(b, n, h, d, generator=g).transpose(1, 2).to(device)
    v = torch.randn(b, n, h, d, generator=g).transpose(1, 2).to(device)
    q = torch.randn(h, m, d, generator=g).to(device)
    y = tm.flare_mix_triton(q, k, v, None, 1.0)
    assert y.stride() == v.stride()  # y keeps the layout, so the model's reshape is free
    y_ref = flare_mix_explicit(q.double(), k.double(), v.double(), None, 1.0)
    assert ((y.double() - y_ref).norm() / y_ref.norm()) < 1e-4


# Padded latent rows overflow exp2 before they are masked to 0; numpy warns, a GPU doesn't.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2")
def test_padding_does_not_change_result(tm, device):
    """A sample's output and gradients do not depend on the padding of its batch."""
    g = torch.Generator().manual_seed(2)
    h, n, m, d, pad = 2, 60, 24, 8, 37
    q = torch.randn(h, m, d, generator=g).to(device).requires_grad_()
    k, v = (torch.randn(1, h, n, d, generator=g).to(device) for _ in range(2))
    y_alone = tm.flare_mix_triton(q, k, v, None, 1.0)
    (dq_alone,) = torch.autograd.grad(y_alone.square().sum(), q)
    k_pad = torch.cat([k, 100 * torch.randn(1, h, pad, d, generator=g).to(device)], 2)
    v_pad = torch.cat([v, 100 * torch.randn(1, h, pad, d, generator=g).to(device)], 2)
    mask = (torch.arange(n + pad) < n)[None].to(device)
    y_pad = tm.flare_mix_triton(q, k_pad, v_pad, mask, 1.0)
    (dq_pad,) = torch.autograd.grad(y_pad[:, :, :n].square().sum(), q)
    assert torch.allclose(y_pad[:, :, :n], y_alone, rtol=1e-4, atol=1e-5)
    assert torch.allclose(dq_pad, dq_alone, rtol=1e-4, atol=1e-4)


def test_rejects_mixed_dtypes(tm, device):
    q = torch.randn(1, 16, 8, device=device)
    k = torch.randn(1, 1, 32, 8, device=device, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="share one dtype"):
        tm.flare_mix_triton(q, k, k, None, 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "B{}H{}N{}M{}D{}{}s{}".format(*c[:5], "mask" if c[5] else "", c[6]))
def test_matches_explicit_gpu(tm, case, dtype):
    b, h, n, m, d, masked, scale = case
    errors = mixer_errors(tm.flare_mix_triton, b, h, n, m, d, dtype, torch.device("cuda"), masked, scale,
                          seed=int(math.log2(n)) + m)
    assert_close_errors(errors, dtype, f"triton gpu {case}")


@pytest.mark.gpu
@needs_tf32
def test_fp32_errors_follow_the_matmul_precision(tm, device):
    """fp32 inputs: ``highest`` runs exact fp32 dots (fp32-level error against float64), ``high``
    TF32 ones (the authors' trainer's setting, `--float32_matmul_precision high`): errors of a
    10-bit mantissa, and at least 10x those of ``highest``, so each setting really reaches the kernels."""
    errors = {}
    for setting in ("highest", "high"):
        with float32_matmul_precision(setting):
            errors[setting] = mixer_errors(tm.flare_mix_triton, 2, 4, 5000, 64, 8, torch.float32, device, True, 1.0,
                                           seed=17)
    exact, tf32 = (max(errors[s].values()) for s in ("highest", "high"))
    assert exact < 2e-5, errors
    assert 10 * exact < tf32 < 1e-2, errors  # TF32's 10-bit mantissa in the logits; bf16's 7 bits give ~2e-2
