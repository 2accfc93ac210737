"""Transformer with full softmax self-attention over the points: the FLARE paper's
"vanilla Transformer" baseline (strongest on Darcy), as configured in github.com/vpuri3/FLARE.py
(width 80, 8 blocks, 5 heads of 16 channels, MLP ratio 4, residual-MLP lifting and head)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from flare_lightning.models.init import init_linear_and_norm
from flare_lightning.models.mlp import ResidualMLP, make_activation
from flare_lightning.models.options import check_heads


class SelfAttention(nn.Module):
    """Multi-head softmax self-attention (scale D^-1/2) through ``scaled_dot_product_attention``;
    padded points are masked out as keys, so real points never attend to them.

    Args:
        channels: width C (divisible by ``num_heads``).
        num_heads: heads H.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        check_heads("Transformer", channels, num_heads)
        self.num_heads = num_heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, C]; mask: [B, N] bool -> [B, N, C]."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)  # [B, H, N, D]
        # Key mask only: a padded query row still sees the real keys (no all-masked row, no NaN).
        attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, N]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj_out(y.transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` (MLP: Linear, act, Linear)."""

    def __init__(self, channels: int, num_heads: int, mlp_ratio: float, act: str) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = SelfAttention(channels, num_heads)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), make_activation(act), nn.Linear(hidden, channels))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, C] -> [B, N, C]."""
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Full-attention surrogate: ``model(x [B, N, in_dim], mask [B, N]) -> [B, N, out_dim]``.

    Residual-MLP lifting (as FLARE's), ``num_blocks`` pre-norm softmax-attention blocks,
    ``LayerNorm`` + residual-MLP head. Cost O(N^2) per block: fine at Darcy's 7225 points.

    Args:
        in_dim: input channels per point.
        out_dim: output channels per point.
        channels: width C (reference: 80).
        num_blocks: attention blocks (8).
        num_heads: heads per block (reference: C // 16 = 5).
        mlp_ratio: feed-forward hidden width as a multiple of C (4.0).
        io_layers: hidden residual layers of the lifting and the head (2).
        act: activation of the blocks' feed-forward (reference: exact ``gelu``).
        io_act: activation of the lifting and the head (reference: ``gelu_tanh``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        channels: int = 80,
        num_blocks: int = 8,
        num_heads: int = 5,
        mlp_ratio: float = 4.0,
        io_layers: int = 2,
        act: str = "gelu",
        io_act: str = "gelu_tanh",
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.lift = ResidualMLP(in_dim, channels, channels, io_layers, io_act)
        self.blocks = nn.ModuleList(TransformerBlock(channels, num_heads, mlp_ratio, act) for _ in range(num_blocks))
        self.norm_out = nn.LayerNorm(channels)
        self.head = ResidualMLP(channels, channels, out_dim, io_layers, io_act)
        self.apply(init_linear_and_norm)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, in_dim]; mask: [B, N] bool, True on real points -> [B, N, out_dim]."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"Transformer expects {self.in_dim} input channels, got {x.shape[-1]}")
        h = self.lift(x)
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.norm_out(h))
