"""The fast step inside Lightning's automatic optimization: what it accepts, how it is built,
and Lightning's optimizer step with the captured step in it.

Lightning keeps running the loop: it calls ``training_step``, zero_grad, ``backward`` and the
gradient hooks through its closure, counts ``global_step``, steps the LR schedulers by their
``interval``/``frequency``/``monitor`` and calls every other hook. The module's
``training_step``, ``backward`` and ``optimizer_step`` hand their part to ``FastTrainStep``.
Only public Lightning API is used.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import (
    BaseFinetuning,
    GradientAccumulationScheduler,
    ModelPruning,
    StochasticWeightAveraging,
)
from lightning.pytorch.strategies import DDPStrategy, ParallelStrategy, SingleDeviceStrategy

from flare_lightning.training.adam_update import check_adam
from flare_lightning.training.fast_step import FastTrainStep, LossFn
from flare_lightning.training.loss_scale import DeviceLossScale

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed")
# Hooks that see a step between its backward and its update: when a callback or the module
# implements one, the step is captured as two graphs with the hooks run between them.
GRADIENT_HOOKS = ("on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step")
REFUSED_CALLBACKS = {
    BaseFinetuning: "it freezes and unfreezes parameters and adds optimizer groups during the fit",
    ModelPruning: "it re-parametrises the weights it prunes",
    StochasticWeightAveraging: "it trains an epoch without optimizer steps to update batch norms",
    GradientAccumulationScheduler: "it accumulates gradients over batches",
}


def overrides(obj: object, hook: str, base: type) -> bool:
    """Does ``obj``'s class implement ``hook`` itself (not just inherit ``base``'s)?"""
    return getattr(type(obj), hook) is not getattr(base, hook)


def check_fast_step(trainer: L.Trainer, module: L.LightningModule) -> None:
    """Refuse, before training, what the fast step cannot run as Lightning would; each error
    names the option at fault."""
    if trainer.accumulate_grad_batches != 1:
        raise ValueError("model.fast_step needs trainer.accumulate_grad_batches 1 (one graph is one optimizer step)")
    precision = str(trainer.precision)
    if precision not in PRECISIONS:
        raise ValueError(
            f"model.fast_step supports trainer.precision 32-true, bf16-mixed and 16-mixed, got {precision!r}"
        )
    strategy = trainer.strategy
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        raise ValueError(
            f"model.fast_step runs on one device or under DDP (trainer.strategy ddp), got {type(strategy).__name__}"
        )
    if len(trainer.optimizers) != 1:
        raise ValueError(f"model.fast_step drives one optimizer, the module configured {len(trainer.optimizers)}")
    check_adam(trainer.optimizers[0])
    for callback in trainer.callbacks:
        for kind, why in REFUSED_CALLBACKS.items():
            if isinstance(callback, kind):
                raise ValueError(
                    f"model.fast_step cannot run with the {type(callback).__name__} callback (trainer.callbacks): "
                    f"{why}, which a captured step does not follow"
                )
    if overrides(module, "configure_gradient_clipping", L.LightningModule):
        raise ValueError(
            f"model.fast_step clips gradients inside its graph as trainer.gradient_clip_val/_algorithm say; "
            f"{type(module).__name__} overrides configure_gradient_clipping"
        )


def needs_split(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """Two graphs instead of one: several processes (the all-reduce runs between them), or a
    callback or the module implementing a gradient hook."""
    hooked = any(overrides(cb, hook, L.Callback) for cb in trainer.callbacks for hook in GRADIENT_HOOKS)
    return trainer.world_size > 1 or hooked or any(overrides(module, h, L.LightningModule) for h in GRADIENT_HOOKS)


def build_fast_step(module: L.LightningModule, loss_fn: LossFn) -> FastTrainStep:
    """The fast step of ``module``'s fit, after Lightning restored any checkpoint (the optimizer
    state is converted where the captured update can advance it)."""
    trainer = module.trainer
    algorithm = trainer.gradient_clip_algorithm
    scaler = getattr(trainer.precision_plugin, "scaler", None)  # 16-mixed: Lightning's GradScaler, maybe restored
    return FastTrainStep(
        loss_fn,
        trainer.optimizers[0],
        clip_val=trainer.gradient_clip_val,
        clip_algorithm=str(getattr(algorithm, "value", algorithm) or "norm"),
        capture=module.device.type == "cuda",
        split=needs_split(trainer, module),
        loss_scale=None if scaler is None else DeviceLossScale.of(scaler, module.device),
    )


def optimizer_step(fast: FastTrainStep, module: L.LightningModule, optimizer: Any, closure: Any) -> None:
    """Lightning's optimizer step with the fast step in it, in Lightning's order: the closure
    (``training_step`` runs the captured forward and backward; zero_grad, ``backward`` and its
    hooks follow), the loss scale's unscaling (16-mixed), ``on_before_optimizer_step`` of the
    callbacks and the module, the update.

    DDP's reducer is kept out (``block_backward_sync``): no autograd backward reaches it; the
    fast step averages the gradients itself in ``backward``."""
    trainer = module.trainer
    strategy = trainer.strategy
    with strategy.block_backward_sync() if isinstance(strategy, ParallelStrategy) else nullcontext():
        closure()
    fast.unscale()
    if fast.split:
        torch_optimizer = getattr(optimizer, "optimizer", optimizer)  # Lightning hands hooks the torch one
        for callback in trainer.callbacks:
            callback.on_before_optimizer_step(trainer, module, torch_optimizer)
        module.on_before_optimizer_step(torch_optimizer)
    fast.update()


def save_loss_scale(fast: FastTrainStep | None, trainer: L.Trainer, checkpoint: dict[str, Any]) -> None:
    """Put the fast step's loss scale in ``checkpoint`` where Lightning keeps its precision
    plugin's (its GradScaler never stepped: the captured step scaled on the device)."""
    if fast is None or fast.loss_scale is None:
        return
    plugin = trainer.precision_plugin
    plugin.scaler.load_state_dict(fast.loss_scale.state_dict())
    checkpoint[type(plugin).__qualname__] = plugin.state_dict()
