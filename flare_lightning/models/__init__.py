"""Pure ``nn.Module`` models (no Lightning import): FLARE and the paper's baselines."""

from flare_lightning.models.attention import FlareAttention
from flare_lightning.models.flare import FLARE, FlareBlock
from flare_lightning.models.mlp import ResidualMLP
from flare_lightning.models.perceiver import PerceiverIO
from flare_lightning.models.transformer import Transformer
from flare_lightning.models.transolver import Transolver

__all__ = ["FLARE", "FlareAttention", "FlareBlock", "PerceiverIO", "ResidualMLP", "Transformer", "Transolver"]
