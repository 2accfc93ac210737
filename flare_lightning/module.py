"""LightningModule for point-cloud surrogates: normalisation, relative-L2 loss and
metrics, AdamW with a per-batch OneCycle schedule."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from flare_lightning.metrics import RelativeL2Error, relative_l2
from flare_lightning.normalizer import Normalizer

STAGES = ("train", "val", "test")


def _built_by_cli() -> bool:
    """True while LightningCLI instantiates this module with its config as hparams."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:
        return False
    return _given_hyperparameters.get() is not None


class SurrogateModule(L.LightningModule):
    """Trains any ``model(x [B, N, in_dim], mask [B, N]) -> [B, N, out_dim]``.

    Inputs are normalised and outputs de-normalised with statistics fitted on the
    training split (buffers, so checkpoints carry them); the loss and the metric are the
    per-sample relative L2 error on de-normalised fields, averaged over samples.

    Args:
        model: the network, e.g. ``flare_lightning.models.FLARE``.
        in_dim: input channels (linked from the datamodule by the CLI).
        out_dim: output channels (linked from the datamodule by the CLI).
        lr: peak learning rate of the OneCycle schedule.
        weight_decay: AdamW weight decay (latents, norms and biases are exempt).
        betas: AdamW betas.
        pct_start: fraction of steps spent warming up.
        div_factor: initial lr = lr / div_factor.
        final_div_factor: final lr = initial lr / final_div_factor.
        scheduler: ``onecycle`` (per batch, as in the paper) or ``constant``.
    """

    def __init__(
        self,
        model: nn.Module,
        in_dim: int,
        out_dim: int,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        pct_start: float = 0.1,
        div_factor: float = 1e4,
        final_div_factor: float = 1e4,
        scheduler: str = "onecycle",
    ) -> None:
        super().__init__()
        # Built by the CLI, the model arrives as its config (class_path, init_args) and is
        # saved so load_from_checkpoint can rebuild it; built in Python it is an object.
        self.save_hyperparameters(ignore=None if _built_by_cli() else ["model"])
        self.model = model
        self.input_norm = Normalizer(in_dim)
        self.target_norm = Normalizer(out_dim)
        self.metrics = nn.ModuleDict({f"{stage}_rel_l2": RelativeL2Error() for stage in STAGES})
        # Evaluation losses as sums and float weights: exact over DDP ranks with unequal
        # shares (Lightning's own mean of logged values divides an integer sample count).
        self.eval_losses = nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in STAGES[1:]})

    # --- data statistics ---------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Take normalisation statistics from the datamodule when training; a checkpoint
        restored afterwards (resume, test with ``ckpt_path``) overwrites them with its own."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        stats = (getattr(dm, "input_stats", None), getattr(dm, "target_stats", None))
        if stats[0] is not None and (stage == "fit" or not bool(self.input_norm.fitted)):
            self.input_norm.set_stats(*stats[0])
            self.target_norm.set_stats(*stats[1])

    # --- forward -----------------------------------------------------------------
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Raw inputs x [B, N, in_dim] -> de-normalised prediction [B, N, out_dim]."""
        if not bool(self.input_norm.fitted):
            raise RuntimeError(
                "normalisation statistics are not fitted: train first, or load a checkpoint "
                "(e.g. --ckpt_path best)"
            )
        out = self.model(self.input_norm.encode(x), mask)
        return self.target_norm.decode(out.float())

    def _shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        pred = self(batch["x"], batch["mask"])
        errors = relative_l2(pred, batch["y"], batch["mask"])  # [B]
        loss = errors.mean()
        metric = self.metrics[f"{stage}_rel_l2"]
        metric.update(pred, batch["y"], batch["mask"])
        size = batch["x"].shape[0]
        on_step = stage == "train"
        if on_step:
            # Ranks hold equal shares in training, so the synced mean is exact (one scalar per step).
            self.log(f"{stage}/loss", loss, on_step=True, on_epoch=True, batch_size=size, sync_dist=True)
        else:
            self.eval_losses[f"{stage}_loss"].update(loss.detach().float(), weight=size)
            self.log(f"{stage}/loss", self.eval_losses[f"{stage}_loss"], on_step=False, on_epoch=True)
        self.log(f"{stage}/rel_l2", metric, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """De-normalised prediction with the batch's mask and sample ids."""
        pred = self(batch["x"], batch["mask"])
        return {"pred": pred, "mask": batch["mask"], "sample_id": batch["sample_id"], "pos": batch["pos"]}

    # --- optimisation ------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        no_decay = set(self.model.no_weight_decay()) if hasattr(self.model, "no_weight_decay") else set()
        decay, plain = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (plain if name in no_decay or p.dim() < 2 else decay).append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": plain, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        if hp.scheduler == "constant":
            return optimizer
        if hp.scheduler != "onecycle":
            raise ValueError(f"model.scheduler must be 'onecycle' or 'constant', got {hp.scheduler!r}")
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=hp.lr,
            total_steps=max(1, int(self.trainer.estimated_stepping_batches)),
            pct_start=hp.pct_start,
            div_factor=hp.div_factor,
            final_div_factor=hp.final_div_factor,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
