"""The mixer's mathematics (kernels/mixer_math.py) against the whole-sample softmax in float64:
statistics of point parts merge exactly (natural and base-2 forms), a part without real points
contributes nothing, and the decode is the softmax over latents."""

from __future__ import annotations

import math

import torch

from flare_lightning.kernels.mixer_math import (
    decode, encode_stats, latent_logits, mask_keys, merge_normalised, merge_stats,
)


def inputs(seed: int, n: int = 50):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    k, v = (torch.randn(3, 2, n, 4, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.rand(3, n, generator=g) < 0.7
    mask[:, 0] = True
    mask[2, 30:] = False  # sample 2's last part has no real point
    return q, k, v, mask


def whole_encode(q, k, v, mask, scale):
    return torch.softmax(mask_keys(latent_logits(q, k, scale), mask), dim=-1) @ v  # [B, H, M, D]


def test_parts_merge_to_the_whole_encode():
    q, k, v, mask = inputs(0)
    cuts = [(0, 17), (17, 30), (30, 50)]
    parts = [encode_stats(mask_keys(latent_logits(q, k[:, :, a:b], 0.7), mask[:, a:b]), v[:, :, a:b]) for a, b in cuts]
    assert torch.isinf(parts[2][0][2]).all()  # no real point: m = -inf
    m, l, acc = merge_stats(tuple(torch.stack(x) for x in zip(*parts)))
    torch.testing.assert_close(acc / l[..., None], whole_encode(q, k, v, mask, 0.7), rtol=1e-12, atol=1e-12)


def test_normalised_parts_merge_in_base_2():
    q, k, v, mask = inputs(1)
    zs, lses = [], []
    for a, b in [(0, 25), (25, 30), (30, 50)]:
        m, l, acc = encode_stats(mask_keys(latent_logits(q, k[:, :, a:b], 1.0), mask[:, a:b]), v[:, :, a:b])
        lse = torch.where(torch.isinf(m), -1e30, (m + torch.log(l)) / math.log(2))  # an empty part: ~ -1e30
        zs.append(torch.nan_to_num(acc / l[..., None]))
        lses.append(lse)
    z, lse = merge_normalised(torch.stack(lses), torch.stack(zs))
    torch.testing.assert_close(z, whole_encode(q, k, v, mask, 1.0), rtol=1e-12, atol=1e-12)
    logits = mask_keys(latent_logits(q, k, 1.0), mask)
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=-1) / math.log(2), rtol=1e-12, atol=1e-12)


def test_decode_is_the_softmax_over_latents():
    q, k, v, _ = inputs(2)
    z = torch.randn(3, 2, 6, 4, dtype=torch.float64)
    s = torch.einsum("bhnd,hmd->bhnm", k, q) * 0.5
    torch.testing.assert_close(decode(latent_logits(q, k, 0.5), z), torch.softmax(s, dim=-1) @ z)
