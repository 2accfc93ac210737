"""The baseline of the step benchmarks: FLARE as the paper's public code formulates it.

Eager PyTorch, the mixer as two ``scaled_dot_product_attention`` calls (PyTorch picks
flash for bf16 without a mask), every activation stored for backward, no chunking. The
architecture and parameters are those of ``flare_lightning.models.FLARE`` (592,641
parameters for C=64, 8 blocks, M=64 with 2-D input), and ``load_from(flare)`` copies a
``FLARE``'s weights in, so both compute the same function; only the formulation differs.

Imports nothing but torch, so it runs wherever the benchmarks do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceMLP(nn.Module):
    """Linear + GELU(tanh), ``layers`` residual Linear + GELU, Linear; the first and last
    steps are residual when the widths match and the flag says so (as in the paper's code)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, layers: int, res_in: bool, res_out: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fcs = nn.ModuleList(nn.Linear(d_hidden, d_hidden) for _ in range(layers))
        self.fc2 = nn.Linear(d_hidden, d_out)
        self.res_in = res_in and d_in == d_hidden
        self.res_out = res_out and d_hidden == d_out

    def forward(self, x: Tensor) -> Tensor:
        act = lambda t: F.gelu(t, approximate="tanh")  # noqa: E731
        x = x + act(self.fc1(x)) if self.res_in else act(self.fc1(x))
        for fc in self.fcs:
            x = x + act(fc(x))
        return x + self.fc2(x) if self.res_out else self.fc2(x)


class ReferenceBlock(nn.Module):
    """``x + out(mix(k(ln1 x), v(ln1 x)))`` then ``x + mlp(ln2 x)``; latents [C, M] viewed [H, M, D]."""

    def __init__(self, c: int, heads: int, latents: int, layers: int = 3) -> None:
        super().__init__()
        self.heads, self.m = heads, latents
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.latent_q = nn.Parameter(torch.randn(c, latents) * 0.1)
        self.k_proj = ReferenceMLP(c, c, c, layers, True, True)
        self.v_proj = ReferenceMLP(c, c, c, layers, True, True)
        self.out_proj = nn.Linear(c, c)
        self.mlp = ReferenceMLP(c, c, c, layers, True, True)

    def mix(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.latent_q.view(self.heads, self.m, d).unsqueeze(0).expand(b, -1, -1, -1)  # [B, H, M, D]
        k = self.k_proj(x).view(b, n, self.heads, d).transpose(1, 2)  # [B, H, N, D]
        v = self.v_proj(x).view(b, n, self.heads, d).transpose(1, 2)
        z = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # encode [B, H, M, D]
        y = F.scaled_dot_product_attention(k, q, z, scale=1.0)  # decode [B, H, N, D]
        return self.out_proj(y.transpose(1, 2).reshape(b, n, c))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mix(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ReferenceFLARE(nn.Module):
    """Lifting MLP -> ``blocks`` FLARE blocks -> LayerNorm + head MLP. x: [B, N, d_in] -> [B, N, d_out]."""

    def __init__(self, d_in: int, d_out: int, c: int = 64, blocks: int = 8, heads: int = 8, latents: int = 64):
        super().__init__()
        self.in_proj = ReferenceMLP(d_in, c, c, 2, False, True)
        self.blocks = nn.ModuleList(ReferenceBlock(c, heads, latents) for _ in range(blocks))
        self.ln_out = nn.LayerNorm(c)
        self.out_proj = ReferenceMLP(c, c, d_out, 2, True, False)
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.02)
                nn.init.zeros_(mod.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_proj(x)
        for block in self.blocks:
            x = block(x)
        return self.out_proj(self.ln_out(x))

    @torch.no_grad()
    def load_from(self, flare: nn.Module) -> ReferenceFLARE:
        """Copy the weights of a ``flare_lightning.models.FLARE`` of the same shape."""

        def mlp(dst: ReferenceMLP, src: nn.Module) -> None:
            dst.fc1.load_state_dict(src.fc_in.state_dict())
            for a, b in zip(dst.fcs, src.hidden, strict=True):
                a.load_state_dict(b.state_dict())
            dst.fc2.load_state_dict(src.fc_out.state_dict())

        mlp(self.in_proj, flare.lift)
        for dst, src in zip(self.blocks, flare.blocks, strict=True):
            dst.ln1.load_state_dict(src.norm1.state_dict())
            dst.ln2.load_state_dict(src.norm2.state_dict())
            dst.latent_q.copy_(src.attn.latents.reshape(dst.latent_q.shape))
            mlp(dst.k_proj, src.attn.k_proj)
            mlp(dst.v_proj, src.attn.v_proj)
            dst.out_proj.load_state_dict(src.attn.out_proj.state_dict())
            mlp(dst.mlp, src.mlp)
        self.ln_out.load_state_dict(flare.norm_out.state_dict())
        mlp(self.out_proj, flare.head)
        return self


class ReferenceSurrogate(nn.Module):
    """``ReferenceFLARE`` behind the framework's model interface, compiled as the authors'
    trainer compiles it (``torch.compile`` of the whole model), for ``flare fit`` timings.

    Args:
        in_dim, out_dim: channels per point (linked from the data by the CLI).
        channels, num_blocks, num_heads, num_latents: the FLARE shape.
        compile: ``torch.compile`` the model (the authors' default).
    """

    def __init__(self, in_dim: int, out_dim: int, channels: int = 64, num_blocks: int = 8, num_heads: int = 8,
                 num_latents: int = 64, compile: bool = True) -> None:
        super().__init__()
        self.net = ReferenceFLARE(in_dim, out_dim, channels, num_blocks, num_heads, num_latents)
        if compile:
            self.net.compile()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, N, in] -> [B, N, out]; the paper's code takes no mask: use it on meshes of one
        size (Darcy, elasticity), whose batches have no padding."""
        return self.net(x)
