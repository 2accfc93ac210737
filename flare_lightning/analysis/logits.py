"""Attention-logit statistics per layer: the check for attention-logit growth, the training
instability where query and key norms grow until each softmax is (nearly) one-hot.

Covers FLARE's mixers (encode and decode, from their keys) and every attention computed by
``torch.nn.functional.scaled_dot_product_attention`` (the Transformer and PerceiverIO baselines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from flare_lightning.analysis.capture import capture_keys
from flare_lightning.models.attention import FlareAttention

CHUNK_ELEMENTS = 2**26  # float64 logits held at once: 0.5 GB


@dataclass
class LogitStats:
    """One attention's logits over the sampled query rows of a batch, in float64.

    Attributes:
        layer: where it ran: ``"attention <i>"`` (i-th SDPA call) or ``"flare <i> encode|decode"``.
        max_abs_logit: largest |q.k x scale| over the attended keys.
        entropy: mean softmax entropy of a query row, nats.
        max_entropy: mean of log(attended keys): the entropy of uniform attention.
    """

    layer: str
    max_abs_logit: float
    entropy: float
    max_entropy: float


def logit_stats(layer: str, q: Tensor, k: Tensor, scale: float, key_mask: Tensor | None = None,
                query_mask: Tensor | None = None, max_rows: int = 256) -> LogitStats:
    """Statistics of ``softmax(q k^T x scale)`` on at most ``max_rows`` evenly spaced query rows,
    in float64, a few rows at a time (the logits of a row over a million points fit; all rows may not).

    Args:
        q: queries [B, H, Nq, D] (or [H, Nq, D], shared by the batch).
        k: keys [B, H, Nk, D].
        scale: logit scale.
        key_mask: bool, True on attended keys; broadcastable to [B, H, Nq, Nk].
        query_mask: [B, Nq] bool, True on rows to count (padded points' rows are left out).
        max_rows: query rows sampled per (sample, head).
    """
    rows = torch.linspace(0, q.shape[-2] - 1, min(max_rows, q.shape[-2]), device=q.device).round().long()
    b, h, nk = k.shape[0], k.shape[1], k.shape[2]
    step = max(1, CHUNK_ELEMENTS // (b * h * nk))  # rows per chunk
    max_abs, entropy_sum, uniform_sum, counted = 0.0, 0.0, 0.0, 0
    for chunk in rows.split(step):
        logits = (q[..., chunk, :].double() @ k.double().transpose(-1, -2)) * scale  # [B, H, r, Nk]
        attended = torch.ones_like(logits, dtype=torch.bool)
        if key_mask is not None:
            attended = attended & (key_mask[..., chunk, :] if key_mask.shape[-2] > 1 else key_mask)
        rows_kept = torch.ones(logits.shape[:-1], dtype=torch.bool, device=q.device)  # [B, H, r]
        if query_mask is not None:
            rows_kept = rows_kept & query_mask[:, None, chunk]
        p = logits.masked_fill(~attended, -math.inf).softmax(-1)
        entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)
        uniform = attended.sum(-1).double().log()
        max_abs = max(max_abs, logits.abs().masked_fill(~attended | ~rows_kept[..., None], 0).amax().item())
        entropy_sum += entropy[rows_kept].sum().item()
        uniform_sum += uniform[rows_kept].sum().item()
        counted += int(rows_kept.sum())
    if counted == 0:
        raise ValueError(f"{layer}: no query row to measure (every sampled row is masked out)")
    return LogitStats(layer, max_abs, entropy_sum / counted, uniform_sum / counted)


class _RecordSDPA(TorchFunctionMode):
    """Records the logit statistics of every ``scaled_dot_product_attention`` call, then runs it."""

    def __init__(self, max_rows: int) -> None:
        super().__init__()
        self.max_rows, self.stats = max_rows, []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
            if mask is not None and mask.dtype != torch.bool:
                raise NotImplementedError("logit statistics need a boolean attn_mask (or none)")
            if kwargs.get("is_causal") or (len(args) > 5 and args[5]):
                raise NotImplementedError("logit statistics of causal attention are not supported")
            scale = kwargs.get("scale") or q.shape[-1] ** -0.5  # keyword-only in SDPA
            self.stats.append(logit_stats(f"attention {len(self.stats)}", q, k, scale, mask, max_rows=self.max_rows))
        return func(*args, **kwargs)


@torch.no_grad()
def attention_logit_stats(model: nn.Module, x: Tensor, mask: Tensor | None = None,
                          max_rows: int = 256) -> list[LogitStats]:
    """Run ``model(x, mask)`` once in eval mode and return its attention-logit statistics in
    call order: encode and decode per FLARE mixer, else one entry per SDPA call (whose query rows
    include padded points': their keys are masked, their rows are not).

    Args:
        model: a network or a ``SurrogateModule`` (raw inputs), called as ``model(x, mask)``.
        x: inputs [B, N, in_dim].
        mask: [B, N] bool, True on real points.
        max_rows: query rows sampled per (sample, head) and attention.
    """
    if any(isinstance(m, FlareAttention) for m in model.modules()):
        stats = []
        for i, keys in enumerate(capture_keys(model, x, mask)):
            point_mask = None if keys.mask is None else keys.mask[:, None, None, :]  # [B, 1, 1, N]
            stats.append(logit_stats(f"flare {i} encode", keys.latents, keys.keys, keys.scale, point_mask,
                                     max_rows=max_rows))
            stats.append(logit_stats(f"flare {i} decode", keys.keys, keys.latents[None], keys.scale,
                                     query_mask=keys.mask, max_rows=max_rows))
        return stats
    was_training = model.training
    try:
        model.eval()
        with _RecordSDPA(max_rows) as recorder:
            model(x, mask)
    finally:
        model.train(was_training)
    if not recorder.stats:
        raise ValueError(f"{type(model).__name__} computed no attention through scaled_dot_product_attention "
                         "and has no FlareAttention layer")
    return recorder.stats
