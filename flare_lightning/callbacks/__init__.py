"""Lightning callbacks of flare-lightning."""

from flare_lightning.callbacks.epoch_summary import EpochSummary
from flare_lightning.callbacks.test_metrics import TestMetricsWriter

__all__ = ["EpochSummary", "TestMetricsWriter"]
