"""FLARE attention: residual-MLP keys and values mixed through M learnable latents per head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flare_lightning.kernels import flare_mix, flare_weights
from flare_lightning.kernels.dispatch import BACKENDS, mixer_dtype, resolve_backend
from flare_lightning.kernels.mixer_math import (
    EncodeStats,
    decode,
    encode_stats,
    latent_logits,
    mask_keys,
    merge_stats,
    normalised_stats,
)
from flare_lightning.models.mlp import ResidualMLP
from flare_lightning.models.options import check_finite, check_heads, check_ints
from flare_lightning.models.precision import as_float, check_fp32_parts, full_precision, keeps_fp32


# torch.compile traces the mixer: the Triton kernels are custom ops (opaque to Inductor,
# with fake implementations for shapes), the other backends are plain PyTorch.
_mix = flare_mix


def _kv_pair() -> bool:
    """Whether fused key/value MLPs run as one op (``triton_mlp_pair.KV_PAIR``; off until timed)."""
    from flare_lightning.kernels import triton_mlp_pair

    return triton_mlp_pair.KV_PAIR


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
        fp32_parts: ``kv`` and ``mixer`` keep float32 under autocast (``models/precision.py``);
            with ``mixer`` the output is float32 (the block adds it in its stream's dtype).
        mlp_store_hidden: the fused key/value MLPs keep their layers' inputs for backward
            (``ResidualMLP.store_hidden``).

    Every method that takes the block's ``norm`` applies it to x first; with ``fused`` the
    Triton kernels run the LayerNorm and the key/value MLPs in one pass (``FlareBlock``
    decides), which keeps the normed [B, N, C] tensor and the MLPs' activations out of memory.
    """

    # Set by flare_lightning.parallel.attach_context: the layer then holds one share of each
    # sample's points and mixes them with the other ranks' shares (None: whole samples).
    context = None

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
        fp32_parts: list[str] | None = None,
        mlp_store_hidden: bool = False,
    ) -> None:
        super().__init__()
        self.fp32 = check_fp32_parts("FlareAttention", fp32_parts)
        check_ints("FlareAttention", 1, channels=channels, num_heads=num_heads, num_latents=num_latents)
        check_ints("FlareAttention", 0, kv_layers=kv_layers)
        check_heads("FlareAttention", channels, num_heads)
        check_finite("FlareAttention", scale=scale)
        if mixer_backend not in BACKENDS:
            raise ValueError(f"FlareAttention: mixer_backend must be one of {BACKENDS}, got {mixer_backend!r}")
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.scale = scale
        self.mixer_backend = mixer_backend
        self.latents = nn.Parameter(0.1 * torch.randn(num_heads, num_latents, self.head_dim))  # N(0, 0.1)
        self.k_proj = ResidualMLP(channels, channels, channels, kv_layers, act, chunk_size=mlp_chunk_size,
                                  store_hidden=mlp_store_hidden)
        self.v_proj = ResidualMLP(channels, channels, channels, kv_layers, act, chunk_size=mlp_chunk_size,
                                  store_hidden=mlp_store_hidden)
        self.out_proj = nn.Linear(channels, channels)

    def _heads(self, t: Tensor) -> Tensor:
        """[B, N, C] -> [B, H, N, D]."""
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _project(self, mlp: ResidualMLP, x: Tensor, norm: nn.Module | None, fused: bool) -> Tensor:
        """``mlp(norm(x))`` [B, N, C]: fused kernels (output in the mixer's dtype) or PyTorch;
        in float32 with ``fp32_parts`` ``kv`` (the mixer casts to its own dtype)."""
        fp32 = keeps_fp32(x, "kv" in self.fp32)
        with full_precision(x, fp32):
            x = as_float(x, fp32)
            if fused:
                return mlp.forward_fused(x, norm, out_dtype=mixer_dtype(x))
            return mlp(x if norm is None else norm(x))

    def keys(self, x: Tensor, norm: nn.Module | None = None, fused: bool = False) -> Tensor:
        """Keys [B, H, N, D] of x [B, N, C] (normed by ``norm`` first, if given)."""
        return self._heads(self._project(self.k_proj, x, norm, fused))

    def _project_pair(self, x: Tensor, norm: nn.LayerNorm) -> tuple[Tensor, Tensor]:
        """``_project`` of the key and value MLPs as one fused op (``kernels/triton_mlp_pair.py``: their
        backward shares LN(x) and sums dx in the kernel)."""
        from flare_lightning.kernels.triton_mlp_pair import fused_mlp_pair_triton

        fp32 = keeps_fp32(x, "kv" in self.fp32)
        with full_precision(x, fp32):
            x = as_float(x, fp32)
            return fused_mlp_pair_triton(x, self.k_proj.stacked(), self.v_proj.stacked(), (norm.weight, norm.bias, norm.eps),
                                         self.k_proj.act_name, mixer_dtype(x), self.k_proj.store_hidden)

    def keys_values(self, x: Tensor, norm: nn.Module | None = None, fused: bool = False) -> tuple[Tensor, Tensor]:
        """Keys and values [B, H, N, D] of x [B, N, C]."""
        if fused and norm is not None and _kv_pair():
            k, v = self._project_pair(x, norm)
        else:
            k, v = self._project(self.k_proj, x, norm, fused), self._project(self.v_proj, x, norm, fused)
        return self._heads(k), self._heads(v)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, norm: nn.Module | None = None, fused: bool = False,
        project: bool = True,
    ) -> Tensor:
        """x: [B, N, C]; mask: [B, N] bool (True on real points) -> [B, N, C] (without ``project``: the
        heads' outputs before ``out_proj``, for a caller that applies it, e.g. folded into its MLP)."""
        k, v = self.keys_values(x, norm, fused)
        fp32 = keeps_fp32(x, "mixer" in self.fp32)  # then the output stays float32 too
        with full_precision(x, fp32):
            k, v = as_float(k, fp32), as_float(v, fp32)
            if self.context is not None and self.context.enabled:
                y = self.context.mix(self.latents, k, v, mask, self.scale, self.mixer_backend)  # [B, H, N, D]
            else:
                y = _mix(self.latents, k, v, mask, self.scale, self.mixer_backend)  # [B, H, N, D]
            y = y.transpose(1, 2).reshape(x.shape)
            return self.out_proj(y) if project else y

    # --- evaluation over point chunks: the encode is a sum over points, so per-chunk
    # partial sums merge exactly by log-sum-exp; the decode is pointwise given z.
    def _fused_mixer_dtype(self, k: Tensor, fp32: bool) -> torch.dtype | None:
        """The dtype the Triton kernels evaluate a chunk in, the one ``forward`` mixes in (float32
        with ``fp32_parts`` ``mixer``: ``fp32`` from ``keeps_fp32``); None where the plain PyTorch
        statistics run instead (another backend, no CUDA, float64)."""
        if resolve_backend(self.mixer_backend, k) != "triton":
            return None
        dtype = torch.float32 if fp32 else mixer_dtype(k)
        return dtype if dtype in (torch.float32, torch.bfloat16, torch.float16) else None

    def encode_partial(
        self, x: Tensor, mask: Tensor | None = None, norm: nn.Module | None = None, fused: bool = False
    ) -> EncodeStats:
        """Encode statistics of one chunk of points: from the Triton encode where it runs (in the
        dtype ``forward`` mixes in, nothing of size n x M stored), else in plain PyTorch in float32
        (float64 for a float64 model).

        x: [B, n, C] (block input, normed by ``norm``); mask: [B, n] bool. Returns the running max
        ``m`` [B, H, M], the sum ``l`` [B, H, M] of ``exp(logit - m)`` and the weighted
        value sum ``acc`` [B, H, M, D]; ``merge_encode`` joins chunks and ``z = acc / l``.
        """
        k, v = self.keys_values(x, norm, fused)
        fused_dtype = self._fused_mixer_dtype(k, keeps_fp32(x, "mixer" in self.fp32))
        if fused_dtype is not None:  # the Triton encode: nothing of size n x M in memory
            from flare_lightning.kernels.triton_mixer import flare_encode_triton

            q, k, v = (t.to(fused_dtype) for t in (self.latents, k, v))
            return normalised_stats(*flare_encode_triton(q, k, v, mask, self.scale))
        dtype = torch.promote_types(k.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):  # statistics stay in full precision
            logits = latent_logits(self.latents.to(dtype), k.to(dtype), self.scale)  # [B, H, M, n]
            return encode_stats(mask_keys(logits, mask), v.to(dtype))

    @staticmethod
    def merge_encode(a: EncodeStats, b: EncodeStats) -> EncodeStats:
        """Join two ``encode_partial`` results (log-sum-exp rescaling)."""
        return merge_stats(tuple(torch.stack(pair) for pair in zip(a, b)))

    def latent_summary(self, stats: EncodeStats) -> Tensor:
        """z = acc / l [B, H, M, D] of merged ``encode_partial`` statistics (joined with the
        other ranks' shares first under context parallelism)."""
        if self.context is not None and self.context.enabled:
            stats = self.context.merge_stats(stats)
        return stats[2] / stats[1][..., None]

    def decode(self, x: Tensor, z: Tensor, norm: nn.Module | None = None, fused: bool = False) -> Tensor:
        """Mixer output for one chunk given the latent summary ``z`` [B, H, M, D] (``acc / l``).

        x: [B, n, C] (block input, normed by ``norm``) -> [B, n, C] (after ``out_proj``).
        """
        k = self.keys(x, norm, fused)
        fp32 = keeps_fp32(x, "mixer" in self.fp32)
        fused_dtype = self._fused_mixer_dtype(k, fp32)
        if fused_dtype is not None:
            from flare_lightning.kernels.triton_mixer import flare_decode_triton

            y = flare_decode_triton(self.latents.to(fused_dtype), z, k.to(fused_dtype), self.scale)
        else:
            with torch.autocast(x.device.type, enabled=False):
                y = decode(latent_logits(self.latents.to(z.dtype), k.to(z.dtype), self.scale), z)  # [B, H, n, D]
        y = y.to(z.dtype if fp32 else mixer_dtype(k)).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        with full_precision(x, fp32):
            return self.out_proj(y)

    @torch.no_grad()
    def attention_weights(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode ``[B, H, M, N]`` and decode ``[B, H, N, M]`` weights for input x [B, N, C] (normed)."""
        k = self._heads(self.k_proj(x))
        return flare_weights(self.latents.to(k.dtype), k, mask, self.scale)
