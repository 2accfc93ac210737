"""Prediction, target and error fields of a few samples, as PNG files and logged images."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from flare_lightning.analysis.fields import plot_predictions, samples_from_batch
from flare_lightning.analysis.plots import save_figure
from flare_lightning.callbacks.sampled import Batch, SampledAnalysis, log_image_file


class PredictionPlots(SampledAnalysis):
    """Draws, for fixed samples, the prediction, the target and the signed error (2-D
    points: colour maps on a triangulation; 3-D: surface scatter) into
    ``<run>/predictions/epoch_XXXX.png`` during fit and ``predictions/test.png`` after
    test (in the tested checkpoint's run), and logs them to loggers that take images.

    Args:
        num_samples: samples drawn (first validation samples; first test samples at test).
        every_n_epochs: draw at epochs 0, n, 2n, ... and at the last epoch.
        max_points: draw at most this many points per sample (a fixed random subset).
        channel: output channel to draw.
    """

    subdir = "predictions"

    def __init__(self, num_samples: int = 3, every_n_epochs: int = 10, max_points: int | None = 65536, channel: int = 0) -> None:
        super().__init__(num_samples, every_n_epochs, max_points)
        self.channel = channel
        self.last_path: Path | None = None

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, batches: list[Batch], tag: str, out_dir: Path) -> None:
        samples = []
        for i, batch in enumerate(batches):
            out = pl_module.predict_step(batch, i)
            samples += samples_from_batch(out["pred"], batch)
        if not 0 <= self.channel < samples[0].pred.shape[1]:
            raise ValueError(f"PredictionPlots: channel {self.channel} out of range for {samples[0].pred.shape[1]} outputs")
        self.last_path = save_figure(plot_predictions(samples, self.channel), out_dir / f"{tag}.png")
        key = "test/predictions" if tag == "test" else "predictions"
        log_image_file(trainer.loggers, key, self.last_path, trainer.global_step)
