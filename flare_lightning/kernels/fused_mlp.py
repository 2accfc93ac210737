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
) -> Tensor:
    """``[residual +] mlp(layer_norm(x))``: see ``triton_mlp.fused_mlp_triton``."""
    try:
        from flare_lightning.kernels.triton_mlp import fused_mlp_triton
    except ImportError as err:
        raise RuntimeError("mlp_backend='triton' needs the triton package; install it or use mlp_backend='torch'") from err

    return fused_mlp_triton(x, weight, bias, ln, residual, act, out_dtype)
