"""Mixer tile autotuning: the choice logic (fake timings) and every candidate tile shape's
numbers (float64 reference; interpreter on CPU, kernels on CUDA)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flare_lightning.kernels import tuning
from tests.kernels.conftest import HAS_CUDA, assert_close_errors, mixer_errors

pytest.importorskip("triton")


def _base(tm):
    tile = tm.KernelConfig(block_n=64, block_m=64, num_warps=4, num_stages=3)
    return tm.MixerConfig(tile, tile, tile, tile)


def test_tune_keeps_the_fastest_candidate_that_agrees(tm):
    """Fake timings: the fastest candidate is wrong, the second raises, the third wins;
    then the second role is tuned on top of the first role's winner."""
    base = _base(tm)
    enc = tuning.candidates(base.encode, 256)
    dec = tuning.candidates(base.decode, 256)
    wrong, broken, good = enc[1], enc[2], enc[3]
    good_dec = dec[5]
    truth = torch.randn(50)
    last = {}

    def run(cfg):
        last["cfg"] = cfg
        if cfg.encode == broken:
            raise RuntimeError("out of resources")
        return [truth + (1.0 if cfg.encode == wrong else 1e-3 * torch.randn(50))]

    def timer(call):
        call()
        cfg = last["cfg"]
        ms = {wrong: 0.1, good: 0.5}.get(cfg.encode, 1.0)
        return ms - (0.2 if cfg.decode == good_dec else 0.0)

    best = tuning.tune(base, ("encode", "decode"), run, 256, timer=timer)
    assert best.encode == good and best.decode == good_dec
    assert best.bwd_decode == base.bwd_decode and best.bwd_encode == base.bwd_encode


def test_tune_returns_the_base_when_nothing_is_faster(tm):
    base = _base(tm)
    best = tuning.tune(base, ("bwd_decode", "bwd_encode"), lambda cfg: [torch.ones(3)], 64, timer=lambda call: 1.0)
    assert best == base


def test_candidates_cover_tiles_and_program_counts(tm):
    base = _base(tm).encode
    cands = tuning.candidates(base, 256)
    assert cands[0] == base and len(set(cands)) == len(cands)
    assert {(c.block_n, c.block_m) for c in cands[1:]} == {(32, 64), (32, 128), (64, 64), (64, 128), (128, 64)}
    assert {c.programs_per_sm for c in cands[1:]} == {2, 4, 8, 16}
    assert all(c.block_m <= 32 for c in tuning.candidates(base, 20)[1:])  # clamped to M's tile


def test_no_tuning_off_cuda_or_when_disabled(tm, monkeypatch):
    tuning.clear_cache()
    monkeypatch.delenv("FLARE_MIXER_AUTOTUNE", raising=False)
    assert not tuning.autotune_enabled()  # opt-in
    monkeypatch.setenv("FLARE_MIXER_AUTOTUNE", "1")
    k = torch.zeros(2, 4, 100, 8, dtype=torch.bfloat16)
    assert not tuning.wants_tuning(k, 64)  # CPU
    base = _base(tm)
    key = ("fwd", "cpu")

    def run(cfg):
        raise AssertionError("must not run")

    assert tuning.tuned_config(key, base, ("encode",), run, k, 64) is base
    assert tuning.tuned_configs() == {}
    monkeypatch.setenv("FLARE_MIXER_AUTOTUNE", "0")
    assert not tuning.autotune_enabled()
    monkeypatch.setenv("FLARE_MIXER_AUTOTUNE", "1")
    assert tuning.autotune_enabled()


def _variant(tm, m, i, programs_per_sm):
    """Config whose every kernel takes the i-th candidate tile shape (point tiles x latent tiles)."""
    base = _base(tm)
    shapes = sorted({(c.block_n, c.block_m) for c in tuning.candidates(base.encode, m)[1:]})
    bn, bm = shapes[i % len(shapes)]
    kern = dataclasses.replace(base.encode, block_n=bn, block_m=bm, programs_per_sm=programs_per_sm)
    return tm.MixerConfig(kern, kern, kern, kern), len(shapes)


@pytest.mark.parametrize("i", range(5))
def test_candidate_tiles_match_explicit(tm, device, i):
    """Each tile shape the tuner may pick, on a masked bf16 problem with M = 200 (two or four
    latent tiles, padded), D = 4 (padded to 16) and N = 300 (several point tiles and chunks)."""
    cfg, count = _variant(tm, 200, i, programs_per_sm=1 + i)
    assert count == 5

    def fn(q, k, v, mask, scale):
        return tm.flare_mix_triton(q, k, v, mask, scale, config=cfg)

    errors = mixer_errors(fn, 2, 2, 300, 200, 4, torch.bfloat16, device, True, 1.0, seed=i)
    assert_close_errors(errors, torch.bfloat16, f"candidate {cfg.encode}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="tuning runs on CUDA only")
def test_custom_op_tunes_once_and_matches_default(tm, monkeypatch):
    """At Darcy's mixer shape the op tunes forward and backward once, and its outputs and
    gradients equal the default tiles' within bf16 rounding."""
    from flare_lightning.kernels.triton_op import mixer_fwd

    tuning.clear_cache()
    monkeypatch.setenv("FLARE_MIXER_AUTOTUNE", "1")
    g = torch.Generator(device="cuda").manual_seed(0)
    kw = dict(device="cuda", dtype=torch.bfloat16, generator=g)
    q = (0.1 * torch.randn(16, 256, 4, **kw)).requires_grad_()
    k, v, dy = (torch.randn(2, 16, 7225, 4, **kw) for _ in range(3))
    k.requires_grad_()
    v.requires_grad_()
    mask = torch.ones(2, 7225, dtype=torch.bool, device="cuda")

    def once():
        y = mixer_fwd(q, k, v, mask, 1.0)[0]
        return [y.float(), *(t.float() for t in torch.autograd.grad(y, (q, k, v), dy))]

    tuned = once()
    assert {key[0] for key in tuning.tuned_configs()} == {"fwd", "bwd"}
    monkeypatch.setenv("FLARE_MIXER_AUTOTUNE", "0")
    tuning.clear_cache()
    default = once()
    assert tuning.tuned_configs() == {}
    for a, b in zip(tuned, default):
        assert float((a - b).norm() / b.norm()) < 2e-2
