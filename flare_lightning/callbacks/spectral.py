"""Spectral analysis of FLARE's token mixing during training and after test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch

from flare_lightning.analysis.plots import plot_effective_rank_history, plot_spectra, save_figure
from flare_lightning.analysis.report import analyse_mixers, merge_batches, summarise
from flare_lightning.callbacks.sampled import Batch, SampledAnalysis, log_image_file
from flare_lightning.atomic import atomic_write_text


class SpectralAnalysis(SampledAnalysis):
    """Eigenvalues and singular values of ``W_dec W_enc`` per block and head, effective
    ranks and head diversity, on fixed samples (see ``flare_lightning.analysis``).

    Writes into ``<run>/spectral/``: ``epoch_XXXX.json`` (mean and std over samples, the
    sample ids, and the seconds spent), ``epoch_XXXX_spectra.png`` (spectra per block,
    heads overlaid), ``eff_rank.png`` (effective rank per block and head over training),
    and after ``test`` ``test.json`` / ``test_spectra.png`` in the tested checkpoint's run.
    Logs ``spectral/eff_rank/block{i}`` (mean over heads and samples),
    ``spectral/lambda2/block{i}`` (second eigenvalue magnitude: 0 for plain averaging,
    near 1 for a slowly mixing head), ``spectral/diversity_{spectra,mixing}/block{i}`` and
    ``spectral/seconds`` to every logger (``test/spectral/...`` after test), and the
    figures to loggers that take images (wandb, TensorBoard).

    Args:
        num_samples: samples analysed (first validation samples; first test samples at test).
        every_n_epochs: analyse at epochs 0, n, 2n, ... and at the last epoch.
        max_points: analyse at most this many points per sample (a fixed random subset; the
            fp64 weights of a block take 16·H·M bytes per point).
        save_figures: draw the PNG figures (the JSON is always written).
    """

    subdir = "spectral"

    def __init__(
        self, num_samples: int = 4, every_n_epochs: int = 5, max_points: int | None = 65536, save_figures: bool = True
    ) -> None:
        super().__init__(num_samples, every_n_epochs, max_points)
        self.save_figures = save_figures
        self.last_summary: dict | None = None

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, batches: list[Batch], tag: str, out_dir: Path) -> None:
        start = time.perf_counter()
        blocks = merge_batches([analyse_mixers(pl_module, b["x"], b["mask"]) for b in batches])
        summary = summarise(blocks)
        analysis_seconds = time.perf_counter() - start
        summary.update(
            stage="test" if tag == "test" else "fit",
            epoch=trainer.current_epoch,
            global_step=trainer.global_step,
            sample_ids=torch.cat([b["sample_id"] for b in batches]).tolist(),
            points=torch.cat([b["mask"].sum(1) for b in batches]).tolist(),
        )
        figures = self._figures(summary, tag, out_dir) if self.save_figures else {}
        summary["seconds"] = {
            "analysis": analysis_seconds,
            "total": time.perf_counter() - start,
            "epoch": self.epoch_seconds if tag != "test" else None,
        }
        atomic_write_text(out_dir / f"{tag}.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")
        self.last_summary = summary
        self._log(trainer, summary, figures)

    def _figures(self, summary: dict, tag: str, out_dir: Path) -> dict[str, Path]:
        """Spectra of this analysis and, during fit, effective ranks over all epochs so far."""
        paths = {"spectra": save_figure(plot_spectra(summary, title=f"{tag}: spectrum of W_dec W_enc"), out_dir / f"{tag}_spectra.png")}
        if summary["stage"] == "fit":
            history = [json.loads(p.read_text()) for p in sorted(out_dir.glob("epoch_*.json"))]
            history = [h for h in history if h["epoch"] != summary["epoch"]] + [summary]
            paths["eff_rank"] = save_figure(plot_effective_rank_history(history), out_dir / "eff_rank.png")
        return paths

    @staticmethod
    def _log(trainer: L.Trainer, summary: dict, figures: dict[str, Path]) -> None:
        prefix = "test/spectral" if summary["stage"] == "test" else "spectral"
        metrics = {f"{prefix}/seconds": summary["seconds"]["total"], "epoch": summary["epoch"]}
        for i, block in enumerate(summary["blocks"]):
            metrics[f"{prefix}/eff_rank/block{i}"] = _mean(block["effective_rank"]["mean"])
            metrics[f"{prefix}/lambda2/block{i}"] = _mean([h[1] for h in block["eigenvalue_abs"]["mean"] if len(h) > 1])
            for name in ("spectra", "mixing"):
                metrics[f"{prefix}/diversity_{name}/block{i}"] = block["diversity"][name]["mean"]
        metrics = {k: v for k, v in metrics.items() if v is not None}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        for name, path in figures.items():
            log_image_file(trainer.loggers, f"{prefix}/{name}", path, trainer.global_step)


def _mean(values: list) -> float | None:
    """Mean of the finite entries of a JSON list (None marks non-finite ones)."""
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else None
