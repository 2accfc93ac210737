"""Attention-logit growth, watched during training: per attention layer, the largest logit and
the softmax entropy on fixed samples, logged every few epochs, with a warning when logits blow up."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from flare_lightning.analysis.logits import LogitStats, attention_logit_stats
from flare_lightning.atomic import atomic_write_text
from flare_lightning.callbacks.sampled import Batch, SampledAnalysis


class AttentionLogits(SampledAnalysis):
    """Largest |logit| and mean softmax entropy of every attention (FLARE's encode and decode,
    the baselines' SDPA calls; see ``flare_lightning.analysis.attention_logit_stats``), on the
    first validation samples every ``every_n_epochs`` and on the first test samples after test.

    Writes ``<run>/attention_logits/epoch_XXXX.json`` (``test.json`` after test) and logs
    ``attn_logits/max_abs/<layer>``, ``attn_logits/entropy/<layer>`` (nats; uniform attention
    has ``log(keys)``) and ``attn_logits/max_abs`` (over layers). When a logit exceeds
    ``warn_above`` it warns once per layer, naming the layer and the epoch: a softmax with logits
    that far apart is one-hot, the signature of attention-logit growth.

    Args:
        num_samples: samples analysed.
        every_n_epochs: analyse at epochs 0, n, 2n, ... and at the last epoch.
        max_points: analyse at most this many points per sample (a fixed random subset).
        max_rows: query rows sampled per sample, head and attention.
        warn_above: |logit| that triggers the warning (None: never warn).
    """

    subdir = "attention_logits"

    def __init__(self, num_samples: int = 2, every_n_epochs: int = 5, max_points: int | None = 65536,
                 max_rows: int = 256, warn_above: float | None = 1e3) -> None:
        super().__init__(num_samples, every_n_epochs, max_points)
        if max_rows < 1 or (warn_above is not None and warn_above <= 0):
            raise ValueError(f"AttentionLogits: max_rows must be >= 1 and warn_above > 0, got {max_rows} and {warn_above}")
        self.max_rows, self.warn_above = max_rows, warn_above
        self._warned: set[str] = set()

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, batches: list[Batch], tag: str, out_dir: Path) -> None:
        per_batch = [attention_logit_stats(pl_module, b["x"], b["mask"], max_rows=self.max_rows) for b in batches]
        layers = [merge(stats) for stats in zip(*per_batch)]
        record = {"stage": "test" if tag == "test" else "fit", "epoch": trainer.current_epoch,
                  "global_step": trainer.global_step, "layers": layers}
        atomic_write_text(out_dir / f"{tag}.json", json.dumps(finite_or_none(record), indent=1, allow_nan=False) + "\n")
        prefix = "test/attn_logits" if tag == "test" else "attn_logits"
        metrics = {f"{prefix}/max_abs": max(layer["max_abs_logit"] for layer in layers), "epoch": trainer.current_epoch}
        for layer in layers:
            name = re.sub(r"\W+", "_", layer["layer"])
            metrics[f"{prefix}/max_abs/{name}"] = layer["max_abs_logit"]
            metrics[f"{prefix}/entropy/{name}"] = layer["entropy"]
            if self.warn_above is not None and layer["max_abs_logit"] > self.warn_above and layer["layer"] not in self._warned:
                self._warned.add(layer["layer"])
                rank_zero_warn(
                    f"AttentionLogits: {layer['layer']} has |logit| {layer['max_abs_logit']:.3g} > {self.warn_above:g} at "
                    f"epoch {trainer.current_epoch} (mean entropy {layer['entropy']:.2f} nats, uniform "
                    f"{layer['max_entropy']:.2f}): attention-logit growth; its softmax is close to one-hot"
                )
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def finite_or_none(value: object) -> object:
    """JSON-safe copy: non-finite floats (a diverged run's logits) become None."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def merge(stats: tuple[LogitStats, ...]) -> dict:
    """One layer over several batches: the largest logit, the mean of the batches' entropies."""
    return {"layer": stats[0].layer, "max_abs_logit": max(s.max_abs_logit for s in stats),
            "entropy": sum(s.entropy for s in stats) / len(stats),
            "max_entropy": sum(s.max_entropy for s in stats) / len(stats)}
