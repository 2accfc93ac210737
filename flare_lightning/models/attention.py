"""FLARE attention: residual-MLP keys and values mixed through M learnable latents per head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flare_lightning.kernels import flare_mix, flare_weights
from flare_lightning.models.mlp import ResidualMLP


class FlareAttention(nn.Module):
    """Global token mixing at O(N M) cost.

    Each head h owns latents ``q_h [M, D]``; ``z = softmax_N(s q kᵀ) v`` gathers the N
    points into M latents and ``y = softmax_M(s k qᵀ) z`` scatters them back. There is
    no query projection: the latents are the queries.

    Args:
        channels: model width C (a multiple of ``num_heads``).
        num_heads: H; each head has D = C / H channels.
        num_latents: M latent queries per head.
        kv_layers: hidden residual layers of the key and value MLPs.
        act: activation of the key/value MLPs.
        scale: logit scale s (the reference uses 1.0, not 1/sqrt(D)).
        mixer_backend: implementation of the mixer (see ``flare_lightning.kernels.BACKENDS``).
        mlp_chunk_size: chunk size over points for the key/value MLPs (None: no chunking).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        num_latents: int,
        kv_layers: int = 3,
        act: str = "gelu_tanh",
        scale: float = 1.0,
        mixer_backend: str = "auto",
        mlp_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.scale = scale
        self.mixer_backend = mixer_backend
        self.latents = nn.Parameter(torch.empty(num_heads, num_latents, self.head_dim))
        self.k_proj = ResidualMLP(channels, channels, channels, kv_layers, act, chunk_size=mlp_chunk_size)
        self.v_proj = ResidualMLP(channels, channels, channels, kv_layers, act, chunk_size=mlp_chunk_size)
        self.out_proj = nn.Linear(channels, channels)

    def _heads(self, t: Tensor) -> Tensor:
        """[B, N, C] -> [B, H, N, D]."""
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, C]; mask: [B, N] bool (True on real points) -> [B, N, C]."""
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        y = flare_mix(self.latents, k, v, mask, self.scale, self.mixer_backend)  # [B, H, N, D]
        y = y.transpose(1, 2).reshape(x.shape)
        return self.out_proj(y)

    @torch.no_grad()
    def attention_weights(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode ``[B, H, M, N]`` and decode ``[B, H, N, M]`` weights for input x [B, N, C]."""
        k = self._heads(self.k_proj(x))
        return flare_weights(self.latents.to(k.dtype), k, mask, self.scale)
