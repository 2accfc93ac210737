"""Pure ``nn.Module`` models (no Lightning import)."""

from flare_lightning.models.attention import FlareAttention
from flare_lightning.models.flare import FLARE, FlareBlock
from flare_lightning.models.mlp import ResidualMLP

__all__ = ["FLARE", "FlareAttention", "FlareBlock", "ResidualMLP"]
