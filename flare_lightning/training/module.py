"""LightningModule for point-cloud surrogates: normalisation, relative-L2 loss and
metrics, AdamW with a per-batch OneCycle schedule (or any optimizer and scheduler)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from flare_lightning import compat
from flare_lightning.training.adam_update import plain_state
from flare_lightning.training.batch_transfer import SideStreamTransfer
from flare_lightning.training.fast_step import FastTrainStep, GraphedForward
from flare_lightning.training.fast_step_lightning import build_fast_step, check_fast_step, optimizer_step, save_loss_scale
from flare_lightning.forces.metrics import ForceCoefficientErrors, force_report
from flare_lightning.training.losses import check_loss_data, get_loss
from flare_lightning.training.metrics import RelativeL2Error, SampleMean, relative_l2
from flare_lightning.training.normalizer import Normalizer
from flare_lightning.training.schedule import one_cycle

STAGES = ("train", "val", "test")


class SurrogateModule(L.LightningModule):
    """Trains any ``model(x [B, N, in_dim], mask [B, N]) -> [B, N, out_dim]``.

    Inputs are normalised and outputs de-normalised with statistics fitted on the
    training split (buffers, so checkpoints carry them); the metric is the per-sample
    relative L2 error on de-normalised fields, averaged over samples, and so is the loss
    unless ``loss`` picks another objective (``flare_lightning.training.losses``).

    Args:
        model: the network, e.g. ``flare_lightning.models.FLARE``.
        in_dim: input channels (linked from the datamodule by the CLI).
        out_dim: output channels (linked from the datamodule by the CLI).
        lr: peak learning rate of the OneCycle schedule.
        weight_decay: AdamW weight decay (latents, norms and biases are exempt).
        betas: AdamW betas.
        eps: AdamW epsilon (the paper's 1M-point DrivAerML runs: 1e-6).
        pct_start: fraction of steps spent warming up.
        div_factor: initial lr = lr / div_factor.
        final_div_factor: final lr = initial lr / final_div_factor.
        scheduler: ``onecycle`` (per batch, as in the paper) or ``constant``; ignored when
            ``lr_scheduler`` is given.
        optimizer: any optimizer instead of AdamW, e.g. ``--model.optimizer torch.optim.SGD
            --model.optimizer.lr 0.01``; it gets the same parameter groups (latents, norms
            and biases without weight decay) and ``lr``/``betas``/``weight_decay`` above
            no longer apply (OneCycle then peaks at the optimizer's own lr).
        lr_scheduler: any scheduler instead of ``scheduler``, stepped once per epoch, e.g.
            ``--model.lr_scheduler torch.optim.lr_scheduler.CosineAnnealingLR
            --model.lr_scheduler.T_max 100`` (``ReduceLROnPlateau`` watches ``val/rel_l2``).
        fast_step: on CUDA, compile the training loss (model and loss as one graph) and
            replay each training step (forward, loss, backward, the trainer's gradient
            clipping, Adam/AdamW with the scheduled lr and betas) as a CUDA graph inside
            Lightning's automatic optimization, and evaluation forwards as graphs: no host
            overhead at small meshes. Elsewhere the same step runs eagerly. Needs Adam or
            AdamW, 32-true, bf16-mixed or 16-mixed precision (its loss scale kept on the
            device) and no gradient accumulation (docs/fast_step.md).
        loss: training objective on de-normalised fields: ``rel_l2``, or ``darcy_grad`` (the
            paper's Darcy objective: rel. L2 of u + 0.1 x rel. L2 of its grid derivatives).
        eval_fp32: run validation, test and predict forwards in float32 even when the trainer
            trains under bf16/fp16 autocast: at errors of ~1e-2 bf16 rounding costs about a fifth
            of the error (docs/datasets/elasticity.md), for a slower evaluation.
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
        fast_step: bool = False,
        loss: str = "rel_l2",
        eps: float = 1e-8,
        eval_fp32: bool = False,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if scheduler not in ("onecycle", "constant"):
            raise ValueError(f"model.scheduler must be 'onecycle' or 'constant', got {scheduler!r}")
        self.loss_fn = get_loss(loss)
        # Built by the CLI, the model (and optimizer/scheduler choices) arrive as their config
        # (class_path, init_args) and are saved so load_from_checkpoint can rebuild them;
        # built in Python they are objects.
        self.save_hyperparameters(ignore=None if compat.built_by_cli() else ["model", "optimizer", "lr_scheduler"])
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.input_norm = Normalizer(in_dim)
        self.target_norm = Normalizer(out_dim)
        # Training sees per-sample errors (the fast step's graph computes them); evaluation the fields.
        self.metrics = nn.ModuleDict({"train_rel_l2": SampleMean()} | {f"{s}_rel_l2": RelativeL2Error() for s in STAGES[1:]})
        # Evaluation losses as sums and float weights: exact over DDP ranks with unequal
        # shares (Lightning's own mean of logged values divides an integer sample count).
        self.eval_losses = nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in STAGES[1:]})
        # Multi-output targets: relative L2 of each output channel as well (val and test).
        channels = range(out_dim) if out_dim > 1 else []
        self.channel_metrics = nn.ModuleDict({f"{s}_{c}": RelativeL2Error() for s in STAGES[1:] for c in channels})
        self.channel_names = [f"ch{c}" for c in channels]
        self.forces: ForceCoefficientErrors | None = None  # set in setup() when the data defines forces
        self.test_report: dict = {}  # per-run tables for test_metrics.json
        # How a training step runs: None, Lightning's automatic optimization as it is; during a
        # fit with fast_step, the captured step (built in on_train_start, dropped in teardown).
        self._fast: FastTrainStep | None = None
        self._fast_eval: GraphedForward | None = None
        self._fast_fns: tuple[Callable, Callable] | None = None  # (train losses, eval forward) the graphs run
        self._train_metric_logged = False  # train/rel_l2 registered with Lightning this epoch
        self._transfer = SideStreamTransfer()  # training batches' host-to-GPU copies, off the compute stream

    def __getstate__(self) -> dict[str, Any]:
        # Copies (EMA's averaged model, pickling) go without this object's captured graphs and
        # compiled functions: they belong to its own fit and device.
        return super().__getstate__() | {"_fast": None, "_fast_eval": None, "_fast_fns": None,
                                         "_transfer": SideStreamTransfer()}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: bool | None = None, weights_only: bool = True, **kwargs: Any) -> SurrogateModule:
        """Lightning's ``load_from_checkpoint``, weights-only unless told otherwise (older
        torch versions unpickle everything by default, which can run code)."""
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)

    # --- data statistics ---------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Take normalisation statistics from the datamodule when training; a checkpoint
        restored afterwards (resume, test with ``ckpt_path``) overwrites them with its own."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        self.use_data_stats(dm, stage)

    def use_data_stats(self, dm: Any, stage: str) -> None:
        """Install ``dm.input_stats``/``dm.target_stats`` (if fitted) for ``stage``. Mesh
        datamodules call this at the end of their own ``setup``, before callbacks set up,
        so copies that callbacks make of the module (``WeightAveraging``) carry them."""
        stats = (getattr(dm, "input_stats", None), getattr(dm, "target_stats", None))
        if stage == "fit" and dm is not None:
            check_loss_data(self.hparams.loss, dm)
        if stats[0] is not None and (stage == "fit" or not bool(self.input_norm.fitted)):
            self.input_norm.set_stats(*stats[0])
            self.target_norm.set_stats(*stats[1])
        names = getattr(dm, "target_names", None)
        if names is not None and len(names) == len(self.channel_names):
            self.channel_names = list(names)
        reference = getattr(dm, "force_reference", None)
        if reference is not None and self.forces is None:
            self.forces = ForceCoefficientErrors(**reference)

    # --- forward -----------------------------------------------------------------
    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Raw inputs x [B, N, in_dim] -> de-normalised prediction [B, N, out_dim]."""
        self._check_fitted()
        return self._forward_normalised(x, mask)

    def _check_fitted(self) -> None:
        if not bool(self.input_norm.fitted):  # reads a device flag: once per forward, not in graphs
            raise RuntimeError(
                "normalisation statistics are not fitted: train first, or load a checkpoint "
                "(e.g. --ckpt_path best)"
            )

    @staticmethod
    def network_mask(batch: dict[str, Any]) -> Tensor | None:
        """The mask handed to the network: None when the collate found no padding (``padded``
        False), so attention runs its unmasked kernels (flash for the Transformer)."""
        return batch["mask"] if batch.get("padded", True) else None

    def _forward_normalised(self, x: Tensor, mask: Tensor | None) -> Tensor:
        out = self.model(self.input_norm.encode(x), mask)
        return self.target_norm.decode(out.float())

    def _predict(self, batch: dict[str, Tensor]) -> Tensor:
        """Evaluation forward: replayed as a CUDA graph with ``fast_step`` (a static buffer,
        valid until the next call), else the plain forward; in float32 with ``eval_fp32``."""
        if self.hparams.get("eval_fp32"):
            with torch.autocast(batch["x"].device.type, enabled=False):
                return self._predict_in_context(batch)
        return self._predict_in_context(batch)

    def _predict_in_context(self, batch: dict[str, Tensor]) -> Tensor:
        if not (self.hparams.get("fast_step") and batch["x"].is_cuda):
            return self(batch["x"], self.network_mask(batch))
        if self._fast_eval is None:
            self._check_fitted()
            self._fast_eval = GraphedForward(self._fast_functions()[1])
        return self._fast_eval(batch["x"], self.network_mask(batch))

    def _shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        """Validation and test: loss, relative L2 and per-field metrics of the evaluation forward."""
        pred = self._predict(batch)
        loss = self.loss_fn(pred, batch["y"], batch["mask"]).mean()
        metric = self.metrics[f"{stage}_rel_l2"]
        metric.update(pred, batch["y"], batch["mask"])
        size = batch["x"].shape[0]
        self.eval_losses[f"{stage}_loss"].update(loss.detach().float(), weight=size)
        self.log(f"{stage}/loss", self.eval_losses[f"{stage}_loss"], on_step=False, on_epoch=True)
        self.log(f"{stage}/rel_l2", metric, on_step=False, on_epoch=True, batch_size=size)
        self._update_field_metrics(pred, batch, stage)
        return loss

    # --- the training step: Lightning's automatic optimization, or the captured fast step ------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Per-sample losses and errors of the batch, logged the same way in both modes: with the
        fast step they come from its graph, which has run the backward too (and, unsplit, the update)."""
        losses, errors = self._sample_losses(batch) if self._fast is None else self._fast.forward_backward(batch)
        loss = losses.mean()
        size = batch["x"].shape[0]
        # Ranks hold equal shares in training, so the synced mean is exact (one scalar per step).
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=size, sync_dist=True)
        self.metrics["train_rel_l2"].update(errors)
        if not self._train_metric_logged:
            # Logged once per epoch, updated every step: Lightning computes a logged metric object
            # at the epoch's end, and each self.log costs host time the fast step does not have.
            self.log("train/rel_l2", self.metrics["train_rel_l2"], on_step=False, on_epoch=True)
            self._train_metric_logged = True
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_metric_logged = False

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Lightning's transfer; a training batch to a GPU on a side stream, so that it overlaps the
        step before it (``training/batch_transfer.py``)."""
        trainer = self._trainer
        if device.type != "cuda" or trainer is None or not trainer.training:
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        plain = super(SurrogateModule, self).transfer_batch_to_device
        return self._transfer(lambda b: plain(b, device, dataloader_idx), batch, device)

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's backward; the fast step ran it in its graph and hands over the gradients."""
        if self._fast is None:
            super().backward(loss, *args, **kwargs)
        else:
            self._fast.backward()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's optimizer step; the fast step's update replaces ``optimizer.step()``."""
        if self._fast is None:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        else:
            optimizer_step(self._fast, self, optimizer, optimizer_closure)

    def _sample_losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-sample training losses [B] (``model.loss``) and relative L2 errors [B] (no grad)."""
        pred = self._forward_normalised(batch["x"], self.network_mask(batch))
        losses = self.loss_fn(pred, batch["y"], batch["mask"])
        if self.loss_fn is relative_l2:
            return losses, losses.detach()
        return losses, relative_l2(pred.detach(), batch["y"], batch["mask"])

    def _fast_functions(self) -> tuple[Callable, Callable]:
        """(training losses, evaluation forward) that the fast step's graphs run, made once: on
        CUDA each compiled as one whole Inductor graph (normalisers, model, loss; fusion crosses
        block boundaries), elsewhere the plain methods."""
        if self._fast_fns is not None:
            return self._fast_fns
        plain = (self._sample_losses, self._forward_normalised)
        if self.device.type != "cuda":
            return plain
        # Horizontal fusion of the many small independent kernels (weight casts, bias-grad
        # sums): 6.9 -> 6.1 ms per Darcy step, 4.1 -> 3.1 ms elasticity (H200, bf16, a9a96c1).
        self._fast_fns = tuple(torch.compile(fn, options={"combo_kernels": True}) for fn in plain)
        return self._fast_fns

    def on_fit_start(self) -> None:
        if self.hparams.get("fast_step"):
            check_fast_step(self.trainer, self)

    def on_train_start(self) -> None:
        # Lightning has restored a resumed run's optimizer by now: the fast step converts that
        # state; without it, torch's own step needs its plain format back (a captured run's
        # checkpoint carries capturable groups, which torch refuses off CUDA).
        if self.hparams.get("fast_step"):
            self._check_fitted()
            self._fast = build_fast_step(self, self._fast_functions()[0])
        else:
            for optimizer in self.trainer.optimizers:
                plain_state(optimizer)
        # After a resume Lightning has restored the scheduler: a OneCycle planned for another
        # number of steps would fail only when it runs out, possibly hours later.
        scheduler = self.lr_schedulers() if self.trainer.lr_scheduler_configs else None
        if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
            planned, needed = scheduler.total_steps, int(self.trainer.estimated_stepping_batches)
            if planned < needed:
                raise ValueError(
                    f"the checkpoint's OneCycle schedule was planned for {planned} optimizer steps, but this "
                    f"run needs {needed} (trainer.max_epochs, the training data or its batch size changed "
                    "since that run started); resume with the original trainer.max_epochs and data, or train "
                    "a new run that starts from the checkpoint's weights"
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_loss_scale(self._fast, self.trainer, checkpoint)  # 16-mixed: the scale the graph kept

    def teardown(self, stage: str) -> None:
        # Lightning moves the model off the GPU after each stage: captured graphs would replay
        # into freed memory. A later fit builds its own fast step.
        self._fast_eval = None
        if self._fast is not None:
            self._fast.release_graphs()
            self._fast = None

    def _update_field_metrics(self, pred: Tensor, batch: dict[str, Tensor], stage: str) -> None:
        """Per-channel relative L2 of multi-output targets; in test, force coefficients of
        samples that carry surface normals and areas."""
        for c, name in enumerate(self.channel_names):
            metric = self.channel_metrics[f"{stage}_{c}"]
            metric.update(pred[..., c : c + 1], batch["y"][..., c : c + 1], batch["mask"])
            self.log(f"{stage}/rel_l2_{name}", metric, on_step=False, on_epoch=True, batch_size=pred.shape[0])
        if stage == "test" and self.forces is not None and "normals" in batch:
            self.forces.update(pred, batch["y"], batch["normals"], batch["areas"], batch["mask"], batch["sample_id"])

    def on_test_epoch_end(self) -> None:
        """Log Cd/Cl errors and R² over the test runs and keep the per-run table."""
        self.test_report = {}
        if self.forces is None or not self.forces.update_called:
            return
        dataset = getattr(getattr(self.trainer, "datamodule", None), "datasets", {}).get("test")
        name_of = getattr(dataset, "output_name", None)
        values = self.forces.compute()
        names = {i: name_of(i) for i in values["sample_id"].tolist()} if name_of else {}
        scalars, runs = force_report(values, names)
        for key, value in scalars.items():
            self.log(f"test/{key}", value, rank_zero_only=True)
        self.test_report = {"test/forces": {**self.forces.describe(), "runs": runs}}
        self.forces.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """De-normalised prediction with the batch's mask and sample ids."""
        pred = self._predict(batch).clone()
        return {"pred": pred, "mask": batch["mask"], "sample_id": batch["sample_id"], "pos": batch["pos"]}

    # --- optimisation ------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Two groups: weights with the optimizer's weight decay, and latents, norms and
        biases (``model.no_weight_decay()`` and every parameter below 2-D) without."""
        no_decay = set(self.model.no_weight_decay()) if hasattr(self.model, "no_weight_decay") else set()
        decay, plain = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (plain if name in no_decay or p.dim() < 2 else decay).append(p)
        return [{"params": decay}, {"params": plain, "weight_decay": 0.0}]

    def build_optimizer(self, param_groups: list[dict[str, Any]], **overrides: Any) -> torch.optim.Optimizer:
        """The configured optimizer over ``param_groups``: ``model.optimizer`` if given, else
        AdamW(lr, betas, eps, weight_decay), fused on CPU (one kernel for all parameters
        instead of a dozen small ops each: 6x less optimizer time; GPUs keep PyTorch's
        default). ``overrides`` go to the AdamW constructor (e.g. ``capturable=True``, a
        tensor ``lr``, ``fused=False``), for callers that build their own step."""
        if self.optimizer is not None:
            return self.optimizer(param_groups)
        hp = self.hparams
        params = [p for group in param_groups for p in group["params"]]
        # fast_step runs its own captured update and keeps torch's plain state format.
        # Lightning refuses gradient clipping with fused optimizers under mixed precision.
        mixed = self._trainer is not None and "mixed" in str(self.trainer.precision)
        cpu = bool(params) and all(p.device.type == "cpu" and p.is_floating_point() for p in params)
        fused = cpu and not mixed and not hp.get("fast_step")
        kwargs = dict(lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay, fused=fused) | overrides
        return torch.optim.AdamW(param_groups, **kwargs)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Lightning's scheduler config for ``optimizer``: ``model.lr_scheduler`` per epoch
        if given, else the per-batch OneCycle (peaking at each group's lr), else None."""
        if self.lr_scheduler is not None:
            return {"scheduler": self.lr_scheduler(optimizer), "interval": "epoch", "monitor": "val/rel_l2"}
        hp = self.hparams
        if hp.scheduler == "constant":
            return None
        schedule = one_cycle(optimizer, self.trainer.estimated_stepping_batches, hp.pct_start, hp.div_factor,
                             hp.final_div_factor)
        return {"scheduler": schedule, "interval": "step"}

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer(self.parameter_groups())
        schedule = self.build_scheduler(optimizer)
        return optimizer if schedule is None else {"optimizer": optimizer, "lr_scheduler": schedule}
