"""Entry point of the fused residual MLP (``triton_mlp``); this module imports without Triton.

FLARE's key, value and feed-forward MLPs (``ResidualMLP`` at width C, both residuals on) and
the LayerNorm before them run as one forward and one backward kernel pass over the points
with ``mlp_backend='triton'``: ``benchmarks/mlp.py`` measures them against the plain and
compiled PyTorch MLPs.
"""

from __future__ import annotations

import torch
from torch import Tensor


FUSED_WIDTHS = (16, 32, 64, 128)  # one tile holds whole rows: a power of two, >= 16 for tl.dot
MLP_BACKENDS = ("torch", "triton", "auto")


def fused_mlp(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    ln: tuple[Tensor, Tensor, float] | None = None,
    residual: Tensor | None = None,
    act: str = "gelu_tanh",
    out_dtype: torch.dtype | None = None,
    store_hidden: bool = False,
) -> Tensor:
    """``[residual +] mlp(layer_norm(x))`` with ``mlp`` the residual chain of ``weight``/``bias``.

    Args:
        x: [..., C] input (fp32, bf16 or fp16).
        weight: [L, C, C] stacked Linear weights (out, in), first layer first.
        bias: [L, C] stacked biases.
        ln: (weight [C], bias [C], eps) of a LayerNorm applied to x first, or None.
        residual: [..., C] added to the output (the block's residual stream), or None.
        act: activation between layers (none after the last).
        out_dtype: output dtype; default: the dtype eager autocast gives (x's, or the promoted
            dtype of x and the residual).
        store_hidden: keep the inputs of the layers after the first for backward (L - 1 [..., C]
            tensors in the dot dtype) instead of recomputing the chain there; only when a
            gradient will be taken.

    The dots run in autocast's dtype when autocast is on for x's device, else in x's dtype
    (fp32 dots at ``torch.get_float32_matmul_precision()``).
    """
    try:
        from flare_lightning.kernels.triton_mlp import fused_mlp_triton
    except ImportError as err:
        raise RuntimeError("mlp_backend='triton' needs the triton package; install it or use mlp_backend='torch'") from err

    return fused_mlp_triton(x, weight, bias, ln, residual, act, out_dtype, store_hidden)
