"""Transolver (Wu et al., ICML 2024, arXiv 2402.02366): attention among learned physics slices.

Written from the authors' ``Physics_Attention_Irregular_Mesh`` / ``Transolver`` code
(github.com/thuml/Transolver, as vendored in github.com/vpuri3/FLARE.py), the variant the
FLARE paper compares against: 8 layers, width 128, 64 slices, 8 heads, MLP ratio 1.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flare_lightning.models.init import init_linear_and_norm
from flare_lightning.models.mlp import make_activation
from flare_lightning.models.options import check_heads


class PhysicsAttention(nn.Module):
    """Physics-attention: points -> G slice tokens per head -> attention among the tokens -> points.

    Each point p of head h has soft slice weights ``w[p, g] = softmax_g(Linear(x_p) / tau_h)``;
    slice token g is the w-weighted mean of the points' features; the tokens attend to each
    other (softmax, scale D^-1/2); every point gets back ``sum_g w[p, g] token_g``. Padded
    points get zero slice weight, so they enter no token and the tokens do not depend on padding.

    Args:
        channels: width C (divisible by ``num_heads``).
        num_heads: heads H, each of width D = C / H.
        num_slices: slice tokens G per head.
    """

    def __init__(self, channels: int, num_heads: int, num_slices: int) -> None:
        super().__init__()
        check_heads("Transolver", channels, num_heads)
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.temperature = nn.Parameter(torch.full((1, num_heads, 1, 1), 0.5))  # per-head slice temperature
        self.proj_slice_in = nn.Linear(channels, channels)  # features that choose the slices
        self.proj_feat = nn.Linear(channels, channels)  # features gathered into the slice tokens
        self.slice_logits = nn.Linear(self.head_dim, num_slices)
        self.to_q = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.to_k = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.to_v = nn.Linear(self.head_dim, self.head_dim, bias=False)
        self.proj_out = nn.Linear(channels, channels)

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, D]

    def slice_weights(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, C] -> slice weights [B, H, N, G], zero on padded points."""
        logits = self.slice_logits(self._heads(self.proj_slice_in(x)))  # [B, H, N, G]
        w = torch.softmax(logits / self.temperature, dim=-1)
        if mask is not None:
            w = w * mask[:, None, :, None].to(w.dtype)
        return w

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, C]; mask: [B, N] bool -> [B, N, C]."""
        w = self.slice_weights(x, mask)  # [B, H, N, G]
        feat = self._heads(self.proj_feat(x))  # [B, H, N, D]
        mass = w.sum(dim=2)  # [B, H, G]
        tokens = torch.einsum("bhng,bhnd->bhgd", w, feat) / (mass + 1e-5)[..., None]  # [B, H, G, D]
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        tokens = F.scaled_dot_product_attention(q, k, v)  # [B, H, G, D], scale D^-1/2
        out = torch.einsum("bhgd,bhng->bhnd", tokens, w)  # [B, H, N, D]
        b, _, n, _ = out.shape
        return self.proj_out(out.transpose(1, 2).reshape(b, n, -1))


class TransolverBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))`` (MLP: Linear, act, Linear)."""

    def __init__(self, channels: int, num_heads: int, num_slices: int, mlp_ratio: float, act: str) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = PhysicsAttention(channels, num_heads, num_slices)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), make_activation(act), nn.Linear(hidden, channels))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, C] -> [B, N, C]."""
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class Transolver(nn.Module):
    """Transolver for fields on point clouds: ``model(x [B, N, in_dim], mask [B, N]) -> [B, N, out_dim]``.

    Lifting ``Linear(in, 2C) -> act -> Linear(2C, C)`` plus a learned ``placeholder`` vector
    (the reference adds it when there is no separate input function), ``num_blocks``
    Transolver blocks, then ``LayerNorm -> Linear(C, out)``. Linear weights are
    ``trunc_normal_(std=0.02)`` (cut at +-2, so in effect normal) with zero biases, as in the
    reference, whose orthogonal init of the slice projection is overwritten by that same pass.

    Args:
        in_dim: input channels per point.
        out_dim: output channels per point.
        channels: width C (FLARE paper / Transolver: 128).
        num_blocks: Transolver blocks (8).
        num_heads: heads per block (8).
        num_slices: slice tokens per head (64).
        mlp_ratio: feed-forward hidden width as a multiple of C (1.0).
        act: activation (reference: exact ``gelu``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        channels: int = 128,
        num_blocks: int = 8,
        num_heads: int = 8,
        num_slices: int = 64,
        mlp_ratio: float = 1.0,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.lift = nn.Sequential(
            nn.Linear(in_dim, 2 * channels), make_activation(act), nn.Linear(2 * channels, channels)
        )
        self.blocks = nn.ModuleList(
            TransolverBlock(channels, num_heads, num_slices, mlp_ratio, act) for _ in range(num_blocks)
        )
        self.norm_out = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, out_dim)
        self.apply(partial(init_linear_and_norm, truncated=True))
        self.placeholder = nn.Parameter(torch.rand(channels) / channels)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, in_dim]; mask: [B, N] bool, True on real points -> [B, N, out_dim]."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"Transolver expects {self.in_dim} input channels, got {x.shape[-1]}")
        h = self.lift(x) + self.placeholder
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.norm_out(h))

    def no_weight_decay(self) -> set[str]:
        """Parameters kept out of weight decay: slice temperatures, the placeholder, norms, biases."""
        return {n for n, p in self.named_parameters() if p.dim() < 2 or n.endswith(("temperature", "placeholder"))}
