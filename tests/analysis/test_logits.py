"""Attention-logit statistics against plain float64 softmax arithmetic, per model kind."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flare_lightning.analysis import logits as logits_mod
from flare_lightning.analysis.logits import attention_logit_stats, logit_stats
from flare_lightning.models import FLARE, PerceiverIO, Transformer
from flare_lightning.models.transformer import SelfAttention


def reference(q, k, scale, key_mask=None, query_mask=None, rows=None):
    """max |logit|, mean entropy and mean log(#keys) over the given rows, one row at a time."""
    q = q.double().expand(k.shape[0], *q.shape[-3:]) if q.dim() == 3 else q.double()
    k = k.double()
    b, h, nq, _ = q.shape
    rows = range(nq) if rows is None else rows
    max_abs, ent, uni = 0.0, [], []
    for i in range(b):
        for j in range(h):
            for r in rows:
                if query_mask is not None and not query_mask[i, r]:
                    continue
                keys = k[i, j] if key_mask is None else k[i, j][key_mask[i]]
                z = keys @ q[i, j, r] * scale
                p = torch.softmax(z, 0)
                max_abs = max(max_abs, z.abs().max().item())
                ent.append(-(p * p.log()).sum().item())
                uni.append(math.log(len(keys)))
    return max_abs, sum(ent) / len(ent), sum(uni) / len(uni)


def padded_mask(batch: int, points: int) -> torch.Tensor:
    mask = torch.ones(batch, points, dtype=torch.bool)
    for i in range(1, batch):
        mask[i, points - 4 * i :] = False
    return mask


@pytest.mark.parametrize("chunk", [logits_mod.CHUNK_ELEMENTS, 50])  # one chunk; one row per chunk
def test_logit_stats_against_row_by_row_softmax(monkeypatch, chunk):
    monkeypatch.setattr(logits_mod, "CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(3, 2, 17, 4, generator=g) * 3, torch.randn(3, 2, 23, 4, generator=g) * 3
    mask = padded_mask(3, 23)
    got = logit_stats("x", q, k, 0.5, mask[:, None, None, :])
    want = reference(q, k, 0.5, key_mask=mask)
    assert got.max_abs_logit == pytest.approx(want[0], rel=1e-12)
    assert (got.entropy, got.max_entropy) == pytest.approx(want[1:], rel=1e-12)
    # Sampled rows are evenly spaced and include both ends; a query mask leaves rows out.
    qmask = torch.rand(3, 17, generator=g) > 0.3
    got = logit_stats("x", q, k, 0.5, query_mask=qmask, max_rows=5)
    want = reference(q, k, 0.5, query_mask=qmask, rows=[0, 4, 8, 12, 16])
    assert (got.max_abs_logit, got.entropy, got.max_entropy) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="x: no query row"):
        logit_stats("x", q, k, 0.5, query_mask=torch.zeros(3, 17, dtype=torch.bool))


def test_transformer_stats_are_its_attention_and_see_logit_growth():
    torch.manual_seed(0)
    model = Transformer(3, 1, channels=16, num_blocks=3, num_heads=2).double()
    x, mask = torch.randn(2, 30, 3, dtype=torch.float64), padded_mask(2, 30)
    seen = []
    first = next(m for m in model.modules() if isinstance(m, SelfAttention))
    handle = first.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with torch.no_grad():
        before = model(x, mask)
        stats = attention_logit_stats(model, x, mask)
        assert torch.equal(model(x, mask), before)  # the statistics change nothing
    handle.remove()
    assert [s.layer for s in stats] == ["attention 0", "attention 1", "attention 2"]
    h = seen[0]
    q, k, _ = first.qkv(h).view(2, 30, 3, 2, 8).permute(2, 0, 3, 1, 4)
    want = reference(q, k, 8**-0.5, key_mask=mask)
    assert (stats[0].max_abs_logit, stats[0].entropy, stats[0].max_entropy) == pytest.approx(want, rel=1e-9)
    assert stats[1].max_entropy == pytest.approx((math.log(30) + math.log(26)) / 2, rel=1e-12)  # real keys only
    # Queries and keys 100x larger: logits 10^4x larger, attention far from uniform.
    with torch.no_grad():
        first.qkv.weight[:32] *= 100
        first.qkv.bias[:32] *= 100
    grown = attention_logit_stats(model, x, mask)[0]
    assert grown.max_abs_logit == pytest.approx(1e4 * stats[0].max_abs_logit, rel=1e-9)
    assert grown.entropy < stats[0].entropy - 1.0


def test_perceiver_reports_encode_latent_and_decode_attention():
    torch.manual_seed(0)
    model = PerceiverIO(2, 1, channels=16, num_blocks=2, num_heads=2, num_latents=6).double()
    x, mask = torch.randn(2, 20, 2, dtype=torch.float64), padded_mask(2, 20)
    stats = attention_logit_stats(model, x, mask)
    assert len(stats) == 1 + 2 + 1
    assert stats[0].max_entropy == pytest.approx((math.log(20) + math.log(16)) / 2)  # over the real points
    assert stats[1].max_entropy == pytest.approx(math.log(6))  # latents over latents
    assert stats[-1].max_entropy == pytest.approx(math.log(6))  # points over latents


def test_flare_encode_and_decode_from_its_keys_ignore_padding():
    torch.manual_seed(0)
    model = FLARE(3, 1, channels=16, num_blocks=2, num_heads=2, num_latents=8, mixer_backend="explicit").double()
    x, mask = torch.randn(2, 25, 3, dtype=torch.float64), padded_mask(2, 25)
    stats = attention_logit_stats(model, x, mask)
    assert [s.layer for s in stats] == ["flare 0 encode", "flare 0 decode", "flare 1 encode", "flare 1 decode"]
    from flare_lightning.analysis import capture_keys

    keys = capture_keys(model, x, mask)[1]
    enc = reference(keys.latents, keys.keys, keys.scale, key_mask=mask)
    dec = reference(keys.keys, keys.latents[None].expand(2, -1, -1, -1), keys.scale, query_mask=mask)
    assert (stats[2].max_abs_logit, stats[2].entropy, stats[2].max_entropy) == pytest.approx(enc, rel=1e-9)
    assert (stats[3].max_abs_logit, stats[3].entropy, stats[3].max_entropy) == pytest.approx(dec, rel=1e-9)
    x2 = x.clone()
    x2[~mask] = 1e3  # padded points' features do not count
    again = attention_logit_stats(model, x2, mask)
    flat = [v for s in again for v in (s.max_abs_logit, s.entropy, s.max_entropy)]
    assert flat == pytest.approx([v for s in stats for v in (s.max_abs_logit, s.entropy, s.max_entropy)], rel=1e-9)


def test_a_model_without_attention_is_an_error():
    class Pointwise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x, mask=None):
            return self.lin(x)

    with pytest.raises(ValueError, match="Pointwise computed no attention"):
        attention_logit_stats(Pointwise(), torch.randn(1, 5, 2))


def test_sdpa_mask_given_by_position_or_keyword_and_its_scale():
    import torch.nn.functional as F

    class Attend(nn.Module):
        def __init__(self, positional: bool) -> None:
            super().__init__()
            self.positional = positional

        def forward(self, x, mask=None):
            q = k = v = x[:, None]  # one head: [B, 1, N, D]
            m = mask[:, None, None, :]
            if self.positional:
                return F.scaled_dot_product_attention(q, k, v, m, 0.0, False, scale=0.3)[:, 0]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3)[:, 0]

    x, mask = torch.randn(2, 9, 4, dtype=torch.float64), padded_mask(2, 9)
    want = reference(x[:, None], x[:, None], 0.3, key_mask=mask)
    for positional in (True, False):
        got = attention_logit_stats(Attend(positional), x, mask)[0]
        assert (got.max_abs_logit, got.entropy, got.max_entropy) == pytest.approx(want, rel=1e-12)
