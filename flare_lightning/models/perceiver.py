"""PerceiverIO (Jaegle et al., ICLR 2022) for point clouds: the FLARE paper's latent
cross-attention baseline, as configured in github.com/vpuri3/FLARE.py (width 128, 512 latents,
8 latent self-attention blocks of 8 heads, MLP ratio 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flare_lightning.models.init import init_linear_and_norm
from flare_lightning.models.mlp import ResidualMLP, make_activation
from flare_lightning.models.options import check_heads


def _heads(t: Tensor, num_heads: int) -> Tensor:
    b, n, c = t.shape
    return t.view(b, n, num_heads, c // num_heads).transpose(1, 2)  # [B, H, N, D]


def _merge(t: Tensor) -> Tensor:
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)  # [B, N, C]


class LatentEncoder(nn.Module):
    """Cross-attention of M learned latent queries onto the points: ``[B, N, C] -> [B, M, C]``.
    The queries are the latents themselves (no projection); padded points are masked keys.

    Args:
        channels: width C.
        num_heads: heads H.
        num_latents: latents M.
    """

    def __init__(self, channels: int, num_heads: int, num_latents: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.latents = nn.Parameter(torch.randn(num_latents, channels))  # N(0, 1), as in the reference
        self.norm = nn.LayerNorm(channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, C]; mask: [B, N] bool -> latents [B, M, C]."""
        x = self.norm(x)
        q = _heads(self.latents.expand(x.shape[0], -1, -1), self.num_heads)  # [B, H, M, D]
        k, v = _heads(self.to_k(x), self.num_heads), _heads(self.to_v(x), self.num_heads)  # [B, H, N, D]
        attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, N]
        return self.proj_out(_merge(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)))


class LatentBlock(nn.Module):
    """Pre-norm self-attention block over the latents (``[B, M, C] -> [B, M, C]``)."""

    def __init__(self, channels: int, num_heads: int, mlp_ratio: float, act: str) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.proj_out = nn.Linear(channels, channels)
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), make_activation(act), nn.Linear(hidden, channels))

    def forward(self, z: Tensor) -> Tensor:
        """z: [B, M, C] -> [B, M, C]."""
        q, k, v = (_heads(t, self.num_heads) for t in self.qkv(self.norm1(z)).chunk(3, dim=-1))
        z = z + self.proj_out(_merge(F.scaled_dot_product_attention(q, k, v)))
        return z + self.mlp(self.norm2(z))


class PointDecoder(nn.Module):
    """Cross-attention of every point (query) onto the latents: ``([B, M, C], [B, N, C]) -> [B, N, C]``.
    Each point reads only the latents, so points never see each other directly.

    Args:
        channels: width C.
        num_heads: heads H.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm_latents = nn.LayerNorm(channels)
        self.norm_points = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        """z: latents [B, M, C]; x: points [B, N, C] -> [B, N, C]."""
        z, x = self.norm_latents(z), self.norm_points(x)
        q = _heads(self.to_q(x), self.num_heads)  # [B, H, N, D]
        k, v = _heads(self.to_k(z), self.num_heads), _heads(self.to_v(z), self.num_heads)  # [B, H, M, D]
        return self.proj_out(_merge(F.scaled_dot_product_attention(q, k, v)))


class PerceiverIO(nn.Module):
    """PerceiverIO surrogate: ``model(x [B, N, in_dim], mask [B, N]) -> [B, N, out_dim]``.

    Residual-MLP lifting; one cross-attention encode of the points into M latents; latent
    self-attention blocks; one cross-attention decode (each point queries the latents);
    ``LayerNorm`` + residual-MLP head. The encode and decode replace their input (no
    residual), as in the reference. Unlike FLARE, the latents are shared by all heads and
    mixed by self-attention between encode and decode.

    Args:
        in_dim: input channels per point.
        out_dim: output channels per point.
        channels: width C (reference: 128).
        num_blocks: latent self-attention blocks (8).
        num_heads: heads of every attention (reference: C // 16 = 8).
        num_latents: latents M (512).
        mlp_ratio: feed-forward hidden width of the latent blocks as a multiple of C (4.0).
        io_layers: hidden residual layers of the lifting and the head (2).
        act: activation everywhere (reference: ``gelu_tanh``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        channels: int = 128,
        num_blocks: int = 8,
        num_heads: int = 8,
        num_latents: int = 512,
        mlp_ratio: float = 4.0,
        io_layers: int = 2,
        act: str = "gelu_tanh",
    ) -> None:
        super().__init__()
        check_heads("PerceiverIO", channels, num_heads)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.lift = ResidualMLP(in_dim, channels, channels, io_layers, act)
        self.encoder = LatentEncoder(channels, num_heads, num_latents)
        self.blocks = nn.ModuleList(LatentBlock(channels, num_heads, mlp_ratio, act) for _ in range(num_blocks))
        self.decoder = PointDecoder(channels, num_heads)
        self.norm_out = nn.LayerNorm(channels)
        self.head = ResidualMLP(channels, channels, out_dim, io_layers, act)
        self.apply(init_linear_and_norm)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, in_dim]; mask: [B, N] bool, True on real points -> [B, N, out_dim]."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"PerceiverIO expects {self.in_dim} input channels, got {x.shape[-1]}")
        h = self.lift(x)  # [B, N, C]
        z = self.encoder(h, mask)  # [B, M, C]
        for block in self.blocks:
            z = block(z)
        return self.head(self.norm_out(self.decoder(z, h)))

    def no_weight_decay(self) -> set[str]:
        """Parameters kept out of weight decay: the latents, norms and biases."""
        return {n for n, p in self.named_parameters() if p.dim() < 2 or n.endswith("latents")}
