"""The FLARE model: residual-MLP lifting, pre-norm FLARE blocks, residual-MLP head."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from flare_lightning.kernels.dispatch import triton_available
from flare_lightning.kernels.fused_mlp import MLP_BACKENDS
from flare_lightning.models.attention import FlareAttention
from flare_lightning.models.checkpointing import checkpointed
from flare_lightning.models.mlp import ResidualMLP
from flare_lightning.models.norms import LayerNorm, RMSNorm
from flare_lightning.models.options import check_finite, check_heads, check_ints, check_optional_positive
from flare_lightning.models.precision import as_float, check_fp32_parts, full_precision, keeps_fp32, low_precision


def _fold_projection() -> bool:
    """Whether fused blocks fold ``out_proj`` into the feed-forward's kernels (``triton_mlp_proj.FOLD_PROJECTION``;
    off until timed)."""
    from flare_lightning.kernels import triton_mlp_proj

    return triton_mlp_proj.FOLD_PROJECTION


def _foldable(x: Tensor, y: Tensor) -> bool:
    from flare_lightning.kernels.triton_mlp_proj import foldable

    return foldable(x, y)


def make_norm(kind: str, channels: int) -> nn.Module:
    """``layernorm`` or ``rmsnorm`` over the channel axis."""
    if kind == "layernorm":
        return LayerNorm(channels)
    if kind == "rmsnorm":
        return RMSNorm(channels)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


class FlareBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        num_latents: int,
        kv_layers: int,
        ffn_layers: int,
        mlp_ratio: float,
        act: str,
        norm: str,
        scale: float,
        mixer_backend: str,
        mlp_chunk_size: int | None,
        mlp_backend: str = "torch",
        fp32_parts: list[str] | None = None,
        mlp_store_hidden: bool = False,
    ) -> None:
        super().__init__()
        self.fp32 = check_fp32_parts("FlareBlock", fp32_parts)
        self.norm1 = make_norm(norm, channels)
        self.attn = FlareAttention(
            channels, num_heads, num_latents, kv_layers, act, scale, mixer_backend, mlp_chunk_size, fp32_parts,
            mlp_store_hidden,
        )
        self.norm2 = make_norm(norm, channels)
        hidden = int(round(channels * mlp_ratio))
        self.mlp = ResidualMLP(channels, hidden, channels, ffn_layers, act, chunk_size=mlp_chunk_size,
                               store_hidden=mlp_store_hidden)
        self.mlp_backend = mlp_backend
        if mlp_backend not in MLP_BACKENDS:
            raise ValueError(f"FLARE: mlp_backend must be one of {MLP_BACKENDS}, got {mlp_backend!r}")
        self.unfusable = self._unfusable()
        self.triton = triton_available()  # looked up once, not under torch.compile's tracing
        if mlp_backend == "triton" and self.unfusable:
            raise ValueError(f"FLARE: mlp_backend='triton' cannot run this block: {self.unfusable}")

    def _unfusable(self) -> str | None:
        """Why the fused kernels cannot run this block's norms and MLPs, or None."""
        if not isinstance(self.norm1, nn.LayerNorm) or self.norm1.weight is None or self.norm1.bias is None:
            return "the fused kernels apply a LayerNorm with weight and bias (norm='layernorm')"
        for name, mlp in (("key", self.attn.k_proj), ("value", self.attn.v_proj), ("feed-forward", self.mlp)):
            why = mlp.fusable()
            if why:
                return f"its {name} MLP: {why}"
        return None

    def fused(self, x: Tensor) -> bool:
        """Whether this call runs the fused Triton MLPs (``mlp_backend``; ``auto``: on CUDA)."""
        if self.mlp_backend == "torch" or self.unfusable:
            return False
        return self.mlp_backend == "triton" or (x.is_cuda and self.triton)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, C] -> [B, N, C]."""
        fused = self.fused(x)
        if fused and not self.fp32 & {"ffn", "mixer"} and _fold_projection():
            y = self.attn(x, mask, norm=self.norm1, fused=True, project=False)
            if _foldable(x, y):  # out_proj and the residual add inside the feed-forward's kernels
                return self.mlp.forward_fused_projected(x, y, self.attn.out_proj, self.norm2)
            return self.feed_forward(x + self.attn.out_proj(y).to(x.dtype), fused)
        if fused:  # the norms run inside the key/value and feed-forward kernels
            x = x + self.attn(x, mask, norm=self.norm1, fused=True).to(x.dtype)
        else:
            on = keeps_fp32(x, "kv" in self.fp32)  # the norm before the keys and values is theirs
            with full_precision(x, on):
                normed = self.norm1(as_float(x, on))
            x = x + self.attn(normed, mask).to(x.dtype)
        return self.feed_forward(x, fused)

    def feed_forward(self, x: Tensor, fused: bool) -> Tensor:
        """``x + mlp(norm2(x))`` in x's dtype; in float32 inside with ``fp32_parts`` ``ffn``."""
        fp32 = keeps_fp32(x, "ffn" in self.fp32)
        with full_precision(x, fp32):
            h = as_float(x, fp32)
            y = self.mlp.forward_fused(h, self.norm2, residual=h) if fused else h + self.mlp(self.norm2(h))
        return y.to(x.dtype) if fp32 else y

    @torch.no_grad()
    def forward_chunked_(self, h: Tensor, mask: Tensor | None, chunk_size: int) -> Tensor:
        """The block applied to h [B, N, C] in place, ``chunk_size`` points at a time.

        Pass 1 gathers the encode over chunks (log-sum-exp merge, exact); pass 2 decodes
        each chunk and applies the feed-forward. Memory: h plus per-chunk temporaries.
        """
        fused = self.fused(h)
        stats = None
        for lo in range(0, h.shape[1], chunk_size):
            hi = lo + chunk_size
            part = self.attn.encode_partial(h[:, lo:hi], None if mask is None else mask[:, lo:hi], self.norm1, fused)
            stats = part if stats is None else self.attn.merge_encode(stats, part)
        z = self.attn.latent_summary(stats)  # [B, H, M, D]
        for lo in range(0, h.shape[1], chunk_size):
            x = h[:, lo : lo + chunk_size]
            x = x + self.attn.decode(x, z, self.norm1, fused).to(x.dtype)
            h[:, lo : lo + chunk_size] = self.feed_forward(x, fused)
        return h


class FLARE(nn.Module):
    """FLARE surrogate for fields on point clouds and meshes (arXiv 2508.12594).

    Args:
        in_dim: input channels per point (coordinates and input fields).
        out_dim: output channels per point.
        channels: model width C.
        num_blocks: number of FLARE blocks.
        num_heads: heads per block; C must be divisible by it.
        num_latents: M latent queries per head.
        kv_layers: hidden residual layers in the key/value MLPs.
        ffn_layers: hidden residual layers in each block's feed-forward MLP.
        io_layers: hidden residual layers in the input lifting and output head.
        mlp_ratio: feed-forward hidden width as a multiple of C.
        act: activation (``gelu_tanh``, ``gelu``, ``silu``, ``relu``).
        norm: ``layernorm`` or ``rmsnorm``.
        scale: logit scale of the mixer (1.0 as in the reference code).
        mixer_backend: mixer implementation, see ``flare_lightning.kernels.BACKENDS``.
        mlp_chunk_size: apply every pointwise MLP this many points at a time, each chunk
            checkpointed in training, so MLP activations stop growing with N (None: off).
        checkpoint_blocks: recompute each block's activations (and the lifting's and the
            head's) in backward instead of storing them: about one extra forward of compute
            for keeping only the [B, N, C] input of each block.
        eval_chunk_size: without autograd (validation, test, predict), run the model this
            many points at a time: the encode is a sum over points, so chunks merge exactly,
            and memory is the [B, N, C] residual stream plus per-chunk work (None: off).
        fuse_kv: a removed option, still accepted so that configs and checkpoints saved with
            it (every one before its removal holds ``fuse_kv: false``) load; only ``False``.
        mlp_backend: how each block's key, value and feed-forward MLPs run: ``torch`` (plain
            layers), ``triton`` (fused kernels: each MLP and the LayerNorm before it is one pass
            over the points, recomputed in backward, so no MLP activation is kept for backward and
            ``mlp_chunk_size`` is not needed; CUDA only; needs ``norm='layernorm'`` and
            ``mlp_ratio=1``), or ``auto`` (``triton`` where it can run, else ``torch``).
        compile: ``torch.compile`` the blocks, the lifting and the head in place
            (``nn.Module.compile``: parameter names and checkpoints are unchanged).
        fp32_parts: parts that keep float32 under bf16/fp16 autocast, any of ``residual``,
            ``lift``, ``kv``, ``mixer``, ``ffn``, ``head`` (``models/precision.py`` says what
            each covers); None or empty: autocast everywhere. No effect without autocast.
        mlp_store_hidden: with the fused MLP kernels, keep the inputs of each MLP's layers for
            backward instead of recomputing the layer chains there: fewer dots in backward for
            2 ``kv_layers`` + ``ffn_layers`` + 3 more [B, N, C] tensors per block in the dot dtype
            (12 at the defaults: 1.5 GiB per block at 2^20 points, C = 64, bf16).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        channels: int = 64,
        num_blocks: int = 8,
        num_heads: int = 8,
        num_latents: int = 64,
        kv_layers: int = 3,
        ffn_layers: int = 3,
        io_layers: int = 2,
        mlp_ratio: float = 1.0,
        act: str = "gelu_tanh",
        norm: Literal["layernorm", "rmsnorm"] = "layernorm",
        scale: float = 1.0,
        mixer_backend: str = "auto",
        mlp_chunk_size: int | None = None,
        checkpoint_blocks: bool = False,
        eval_chunk_size: int | None = None,
        fuse_kv: bool = False,
        mlp_backend: Literal["torch", "triton", "auto"] = "torch",
        compile: bool = False,
        fp32_parts: list[Literal["residual", "lift", "kv", "mixer", "ffn", "head"]] | None = None,
        mlp_store_hidden: bool = False,
    ) -> None:
        super().__init__()
        self.fp32 = check_fp32_parts("FLARE", fp32_parts)
        check_ints("FLARE", 1, in_dim=in_dim, out_dim=out_dim, channels=channels, num_blocks=num_blocks,
                   num_heads=num_heads, num_latents=num_latents)
        check_ints("FLARE", 0, kv_layers=kv_layers, ffn_layers=ffn_layers, io_layers=io_layers)
        check_optional_positive("FLARE", mlp_chunk_size=mlp_chunk_size, eval_chunk_size=eval_chunk_size)
        check_heads("FLARE", channels, num_heads)
        if fuse_kv:
            raise ValueError("FLARE: fuse_kv was removed (side-by-side key/value GEMMs ran slower than the two "
                             "MLPs, benchmarks/RESULTS.md); drop the option or set it to false")
        check_finite("FLARE", positive=True, mlp_ratio=mlp_ratio)
        if mlp_store_hidden and mlp_backend == "torch":
            raise ValueError("FLARE: mlp_store_hidden applies to the fused MLP kernels; set mlp_backend to "
                             "'triton' or 'auto', or drop it (the torch MLPs store their activations anyway)")
        if int(round(channels * mlp_ratio)) < 1:
            raise ValueError(f"FLARE: mlp_ratio {mlp_ratio} gives a feed-forward width of 0 at channels={channels}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.checkpoint_blocks = checkpoint_blocks
        self.eval_chunk_size = eval_chunk_size
        self.lift = ResidualMLP(in_dim, channels, channels, io_layers, act, chunk_size=mlp_chunk_size)
        self.blocks = nn.ModuleList(
            FlareBlock(
                channels, num_heads, num_latents, kv_layers, ffn_layers, mlp_ratio, act, norm,
                scale, mixer_backend, mlp_chunk_size, mlp_backend, sorted(self.fp32), mlp_store_hidden,
            )
            for _ in range(num_blocks)
        )
        self.norm_out = make_norm(norm, channels)
        self.head = ResidualMLP(channels, channels, out_dim, io_layers, act, chunk_size=mlp_chunk_size)
        self.apply(self._init_weights)
        if compile:
            from flare_lightning.models.compile import compile_model

            compile_model(self)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, FlareAttention):
            nn.init.normal_(module.latents, std=0.1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: [B, N, in_dim]; mask: [B, N] bool, True on real points -> [B, N, out_dim]."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"FLARE expects {self.in_dim} input channels, got {x.shape[-1]}")
        if self.eval_chunk_size is not None and not torch.is_grad_enabled() and x.shape[1] > self.eval_chunk_size:
            return self.forward_chunked(x, mask, self.eval_chunk_size)
        ckpt = self.checkpoint_blocks
        h = checkpointed(self._lift, x, enabled=ckpt)
        for block in self.blocks:
            h = checkpointed(block, h, mask, enabled=ckpt)
        return checkpointed(self._output, h, enabled=ckpt)

    def _lift(self, x: Tensor) -> Tensor:
        """The lifting [.., N, C], in the stream's dtype: float32 with ``fp32_parts``
        ``residual``, else autocast's (float32 inside with ``lift``)."""
        fp32 = keeps_fp32(x, "lift" in self.fp32)
        with full_precision(x, fp32):
            h = self.lift(as_float(x, fp32))
        if "residual" in self.fp32:
            return as_float(h, True)
        return h.to(low_precision(x)) if fp32 else h  # keeps_fp32: autocast is on

    def _output(self, h: Tensor) -> Tensor:
        fp32 = keeps_fp32(h, "head" in self.fp32)
        with full_precision(h, fp32):
            h = as_float(h, fp32)
            return self.head(self.norm_out(h))

    @torch.no_grad()
    def forward_chunked(self, x: Tensor, mask: Tensor | None, chunk_size: int) -> Tensor:
        """``forward`` without autograd, ``chunk_size`` points at a time (equal up to rounding).

        x: [B, N, in_dim]; mask: [B, N] bool -> [B, N, out_dim]. Peak memory: the
        [B, N, C] residual stream plus the work of one chunk (with the Triton mixer a few
        [chunk, C] tensors; with the PyTorch ones also the chunk's [M, chunk] logits per head).
        """
        spans = range(0, x.shape[1], chunk_size)
        h = None
        for lo in spans:
            part = self._lift(x[:, lo : lo + chunk_size])
            if h is None:
                h = part.new_empty(x.shape[0], x.shape[1], part.shape[-1])  # [B, N, C]
            h[:, lo : lo + chunk_size] = part
        for block in self.blocks:
            block.forward_chunked_(h, mask, chunk_size)
        return torch.cat([self._output(h[:, lo : lo + chunk_size]) for lo in spans], dim=1)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters kept out of weight decay: the latents, norms and biases."""
        names = set()
        for name, p in self.named_parameters():
            if name.endswith("latents") or p.dim() < 2:
                names.add(name)
        return names

    @torch.no_grad()
    def attention_weights(self, x: Tensor, mask: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
        """Per block, the encode [B, H, M, N] and decode [B, H, N, M] weights for input x."""
        weights = []
        h = self.lift(x)
        for block in self.blocks:
            weights.append(block.attn.attention_weights(block.norm1(h), mask))
            h = block(h, mask)
        return weights
