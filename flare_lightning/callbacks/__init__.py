"""Lightning callbacks of flare-lightning."""

from flare_lightning.callbacks.attention_logits import AttentionLogits
from flare_lightning.callbacks.ema import EMA
from flare_lightning.callbacks.epoch_summary import EpochSummary
from flare_lightning.callbacks.prediction_writer import PredictionWriter
from flare_lightning.callbacks.predictions import PredictionPlots
from flare_lightning.callbacks.spectral import SpectralAnalysis
from flare_lightning.callbacks.test_metrics import TestMetricsWriter

__all__ = ["AttentionLogits", "EMA", "EpochSummary", "PredictionPlots", "PredictionWriter", "SpectralAnalysis", "TestMetricsWriter"]
