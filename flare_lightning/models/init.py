"""Weight initialisation shared by the baselines: Linear N(0, 0.02) (or truncated), zero
biases, LayerNorms as identity, as in the reference implementations."""

from __future__ import annotations

from torch import nn


def init_linear_and_norm(module: nn.Module, truncated: bool = False) -> None:
    """``module.apply`` target: Linear weights N(0, 0.02) (truncated at +-2 if asked), biases 0,
    LayerNorm weight 1 and bias 0."""
    if isinstance(module, nn.Linear):
        (nn.init.trunc_normal_ if truncated else nn.init.normal_)(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
