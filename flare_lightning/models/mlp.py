"""Residual MLP: the K/V projection, feed-forward and input/output head of FLARE."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flare_lightning.models.checkpointing import apply_in_chunks
from flare_lightning.models.options import check_ints, check_optional_positive

ACTIVATIONS = {
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
}


def make_activation(name: str) -> nn.Module:
    """Activation module by name (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class ResidualMLP(nn.Module):
    """``Linear(in, hidden) -> act``, then ``num_layers`` residual ``Linear+act`` layers,
    then ``Linear(hidden, out)``; the first and last steps add their input when the
    widths match and the residual is enabled.

    Args:
        in_dim: input channels.
        hidden_dim: width of the hidden layers.
        out_dim: output channels.
        num_layers: number of hidden residual layers.
        act: activation name (see ``ACTIVATIONS``).
        input_residual: add the input to the first layer's output when ``in_dim == hidden_dim``.
        output_residual: add the hidden state to the output when ``hidden_dim == out_dim``.
        chunk_size: apply the MLP to at most this many points at a time along dim -2, each
            chunk checkpointed while training: only the MLP's input and output are kept for
            backward and its hidden activations exist for one chunk at a time, so their
            memory does not grow with N (None: all at once, activations stored).
        store_hidden: in the fused kernels (``forward_fused``), keep the layers' inputs for
            backward instead of recomputing the chain there: faster backward, L - 1 more
            [N, C] tensors in the dot dtype while training.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        act: str = "gelu_tanh",
        input_residual: bool = True,
        output_residual: bool = True,
        chunk_size: int | None = None,
        store_hidden: bool = False,
    ) -> None:
        super().__init__()
        check_ints("ResidualMLP", 1, in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim)
        check_ints("ResidualMLP", 0, num_layers=num_layers)
        check_optional_positive("ResidualMLP", chunk_size=chunk_size)
        self.fc_in = nn.Linear(in_dim, hidden_dim)
        self.hidden = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(num_layers))
        self.fc_out = nn.Linear(hidden_dim, out_dim)
        self.act = make_activation(act)
        self.act_name = act
        self.input_residual = input_residual and in_dim == hidden_dim
        self.output_residual = output_residual and hidden_dim == out_dim
        self.chunk_size = chunk_size
        self.store_hidden = store_hidden

    def _forward(self, x: Tensor) -> Tensor:
        h = self.act(self.fc_in(x))
        if self.input_residual:
            h = x + h
        for layer in self.hidden:
            h = h + self.act(layer(h))
        out = self.fc_out(h)
        return h + out if self.output_residual else out

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., N, in_dim] -> [..., N, out_dim]."""
        if self.chunk_size is None or x.dim() < 2:
            return self._forward(x)
        return apply_in_chunks(self._forward, x, self.chunk_size, dim=-2)

    def fusable(self) -> str | None:
        """Why the fused Triton kernels cannot run this MLP, or None when they can."""
        from flare_lightning.kernels.fused_mlp import FUSED_WIDTHS

        width = self.fc_in.out_features
        if not (self.fc_in.in_features == width == self.fc_out.out_features):
            return f"in, hidden and out widths must be equal (got {self.fc_in.in_features}, {width}, " \
                   f"{self.fc_out.out_features})"
        if width not in FUSED_WIDTHS:
            return f"the width must be one of {FUSED_WIDTHS} (got {width})"
        if not (self.input_residual and self.output_residual):
            return "both residuals must be on"
        return None

    def stacked(self) -> tuple[Tensor, Tensor]:
        """All layers' weights [L, C, C] (out, in) and biases [L, C], first layer first."""
        layers = [self.fc_in, *self.hidden, self.fc_out]
        return torch.stack([m.weight for m in layers]), torch.stack([m.bias for m in layers])

    def forward_fused(
        self, x: Tensor, norm: nn.LayerNorm | None = None, residual: Tensor | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> Tensor:
        """``[residual +] self(norm(x))`` in the fused Triton kernels (``fusable()`` must hold).

        x: [..., N, C] -> [..., N, C]. Nothing inside the MLP (nor the norm's output) is kept
        for backward, the kernels recompute it from x, unless ``store_hidden``. Needs CUDA
        tensors (or the interpreter).
        """
        from flare_lightning.kernels.fused_mlp import fused_mlp

        weight, bias = self.stacked()
        ln = None if norm is None else (norm.weight, norm.bias, norm.eps)
        return fused_mlp(x, weight, bias, ln, residual, self.act_name, out_dtype, self.store_hidden)

    def forward_fused_projected(self, x: Tensor, y: Tensor, proj: nn.Linear, norm: nn.LayerNorm) -> Tensor:
        """``x1 + self(norm(x1))`` with ``x1 = x + proj(y)``, the projection inside the fused kernels
        (``kernels/triton_mlp_proj.py``; ``foldable(x, y)`` must hold)."""
        from flare_lightning.kernels.triton_mlp_proj import fused_mlp_proj_triton

        return fused_mlp_proj_triton(x, y, (proj.weight, proj.bias), self.stacked(), (norm.weight, norm.bias, norm.eps),
                                     self.act_name, self.store_hidden)
