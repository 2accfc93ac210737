"""LayerNorm and RMSNorm whose ``forward`` is this project's code, not torch.nn's.

``nn.Module.compile()`` leaves a module whose forward lives in torch.nn uncompiled (dynamo
starts no frame there: an ``nn.LayerNorm`` compiled on its own stays one ATen kernel, 1.6 ms
a step on [2^20, 64] on an H100); these compile like any other module. Parameters, state_dict
keys and arithmetic are nn.LayerNorm's and nn.RMSNorm's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that ``nn.Module.compile()`` compiles."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` that ``nn.Module.compile()`` compiles."""

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)
