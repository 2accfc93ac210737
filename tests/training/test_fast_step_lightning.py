"""The fast step keeps Lightning's contract (``flare_lightning.training.fast_step_lightning``): schedulers
step by their interval, frequency and monitor; the gradient hooks run in Lightning's order and
their in-place changes reach the update; metric names and values are the eager step's; what
it cannot reproduce (other optimizers, some callbacks) is refused before training. On the CPU
the step runs eagerly with the same update as its graphs; the GPU tests run the graphs."""

from __future__ import annotations

import csv
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import BaseFinetuning, StochasticWeightAveraging
from lightning.pytorch.loggers import CSVLogger

from flare_lightning.callbacks.epoch_summary import EpochSummary
from flare_lightning.training.module import SurrogateModule
from tests.training.test_fast_step import fit_tiny, gpu


class EveryThirdStep(SurrogateModule):
    """A scheduler stepped per batch, every third one (Lightning's ``frequency``)."""

    def configure_optimizers(self):
        optimizer = self.build_optimizer(self.parameter_groups())
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 3}}


class LearningRates(L.Callback):
    """The learning rate after every optimizer step (Lightning steps schedulers after the batch)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


SCHEDULES = {
    # stepped once per epoch: 2 epochs, not 2 batches
    "cosine_per_epoch": dict(lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=2)),
    # watches val/rel_l2 (Lightning hands it the metric); threshold 1: no epoch improves, so it halves each
    "plateau": dict(lr_scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, factor=0.5, patience=0,
                                         threshold=1.0)),
    "every_third_step": dict(module_cls=EveryThirdStep),
}
# float32 weights: the fast step's Adam rounds differently from torch's by an ulp here and there
CLOSE = dict(rtol=1e-5, atol=5e-6)


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_schedulers_step_as_lightning_steps_them(tiny_darcy_root, schedule):
    """Same learning rate at every step and same weights as Lightning's automatic optimization,
    for a per-epoch, a plateau and a per-step scheduler with a frequency."""
    runs = {}
    for fast in (False, True):
        lrs = LearningRates()
        _, trainer, traj = fit_tiny(tiny_darcy_root, fast=fast, steps=8, callbacks=(lrs,), val=schedule == "plateau",
                                    **SCHEDULES[schedule])
        runs[fast] = lrs.lrs, traj
    (lr_eager, eager), (lr_fast, fast) = runs[False], runs[True]
    assert fast.fast and len(lr_fast) == 8
    assert lr_fast == lr_eager and len(set(lr_fast)) >= 2  # the schedule moved, as Lightning moved it
    torch.testing.assert_close(fast.params[-1], eager.params[-1], **CLOSE)


@pytest.mark.parametrize("optimizer", [torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adamax], ids=lambda c: c.__name__)
def test_optimizers_the_step_does_not_reproduce_are_refused_before_training(tiny_darcy_root, optimizer):
    """They carry betas and eps like Adam, and would silently train as Adam in the graph."""
    with pytest.raises(ValueError, match=rf"{optimizer.__name__} \(model.optimizer\)"):
        fit_tiny(tiny_darcy_root, fast=True, steps=2, optimizer=optimizer)


def test_half_precision_weights_are_refused_before_training(tiny_darcy_root):
    """``bf16-true`` keeps the weights themselves in bf16, which the captured Adam update (float32
    state beside float32 weights) does not reproduce: refused naming the option and what it takes."""
    with pytest.raises(ValueError, match=r"trainer.precision 32-true, bf16-mixed and 16-mixed, got 'bf16-true'"):
        fit_tiny(tiny_darcy_root, fast=True, steps=2, precision="bf16-true")


def test_adam_trains_as_with_the_eager_step(tiny_darcy_root):
    """``--model.optimizer torch.optim.Adam`` (L2 weight decay added to the gradient, not decoupled)."""
    adam = partial(torch.optim.Adam, lr=3e-3, weight_decay=0.1)
    finals = [fit_tiny(tiny_darcy_root, fast=fast, steps=8, optimizer=adam)[2] for fast in (False, True)]
    assert finals[1].fast
    torch.testing.assert_close(finals[1].params[-1], finals[0].params[-1], **CLOSE)


class Unfreeze(BaseFinetuning):
    def freeze_before_training(self, pl_module) -> None:
        pass

    def finetune_function(self, pl_module, epoch, optimizer) -> None:
        pass


@pytest.mark.parametrize("callback", [Unfreeze(), StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=1)],
                         ids=["BaseFinetuning", "StochasticWeightAveraging"])
def test_callbacks_that_restructure_training_are_refused(tiny_darcy_root, callback):
    with pytest.raises(ValueError, match=f"cannot run with the {type(callback).__name__} callback"):
        fit_tiny(tiny_darcy_root, fast=True, steps=2, callbacks=(callback,))


class GradientHooks(L.Callback):
    """Lightning's gradient hooks in the order they run, the loss and gradient norm they see;
    before the update it halves the gradients in place (as a custom clipping callback would)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.losses: list[float] = []
        self.norms: list[float] = []

    def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:
        self.calls.append("zero_grad")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.calls.append("before_backward")
        self.losses.append(float(loss.detach()))

    def on_after_backward(self, trainer, pl_module) -> None:
        self.calls.append("after_backward")
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in pl_module.parameters()]))))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.calls.append("before_optimizer_step")
        for p in pl_module.parameters():
            p.grad.mul_(0.5)


def hooks_against_eager(root, accelerator: str = "cpu", steps: int = 8, **fit_args) -> dict:
    runs = {}
    for fast in (False, True):
        hooks = GradientHooks()
        module, trainer, traj = fit_tiny(root, fast=fast, steps=steps, callbacks=(hooks,), accelerator=accelerator,
                                         **fit_args)
        runs[fast] = hooks, traj
    (eager_hooks, _), (fast_hooks, fast) = runs[False], runs[True]
    assert fast_hooks.calls == eager_hooks.calls == ["zero_grad", "before_backward", "after_backward",
                                                     "before_optimizer_step"] * steps
    assert fast.fast and fast.fast_steps[-1].split  # two graphs, the hooks between them
    return runs


def test_gradient_hooks_run_in_lightnings_order_and_reach_the_update(tiny_darcy_root):
    runs = hooks_against_eager(tiny_darcy_root)
    (eager_hooks, eager), (fast_hooks, fast) = runs[False], runs[True]
    torch.testing.assert_close(torch.tensor(fast_hooks.losses), torch.tensor(eager_hooks.losses), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(fast_hooks.norms), torch.tensor(eager_hooks.norms), rtol=1e-5, atol=0)
    torch.testing.assert_close(fast.params[-1], eager.params[-1], **CLOSE)


def read_csv(folder) -> list[dict]:
    with open(next(folder.rglob("metrics.csv"))) as f:
        return list(csv.DictReader(f))


def test_metric_names_and_values_are_the_eager_steps(tiny_darcy_root, tmp_path):
    """Under ``loss: darcy_grad`` (where the loss is not the metric): the same logged names, the
    same values per step and per epoch, in callback metrics, metrics.csv and the epoch line."""
    runs = {}
    for fast in (False, True):
        summary = EpochSummary()
        lines = []
        summary_hook = summary.on_train_epoch_end
        summary.on_train_epoch_end = lambda t, m: (summary_hook(t, m), lines.append(summary.last_line.split("  (")[0]))
        logger = CSVLogger(tmp_path, name=f"fast_{fast}")
        _, trainer, traj = fit_tiny(tiny_darcy_root, fast=fast, steps=8, loss="darcy_grad", callbacks=(summary,),
                                    val=True, logger=logger, trainer_args={"log_every_n_steps": 1})
        runs[fast] = {k: float(v) for k, v in trainer.callback_metrics.items()}, read_csv(tmp_path / f"fast_{fast}"), lines
    (metrics, rows, lines), (fast_metrics, fast_rows, fast_lines) = runs[False], runs[True]
    assert {"train/loss_step", "train/loss_epoch", "train/rel_l2", "val/loss", "val/rel_l2"} <= set(metrics)
    assert set(fast_metrics) == set(metrics)
    for key, value in metrics.items():
        assert fast_metrics[key] == pytest.approx(value, rel=1e-5), key
    assert metrics["train/rel_l2"] < 0.99 * metrics["train/loss_epoch"]  # the objective adds derivative terms
    assert list(fast_rows[0]) == list(rows[0]) and len(fast_rows) == len(rows)
    for row, fast_row in zip(rows, fast_rows):
        for key, value in row.items():
            assert (fast_row[key] == "") == (value == "") and (value == "" or float(fast_row[key]) == pytest.approx(
                float(value), rel=1e-5)), key
    assert len(lines) == 2 and [line.split()[:2] for line in fast_lines] == [line.split()[:2] for line in lines]
    for line, fast_line in zip(lines, fast_lines):  # this epoch's numbers, not the previous epoch's
        assert [float(v) for v in fast_line.split()[3::2]] == pytest.approx([float(v) for v in line.split()[3::2]],
                                                                            rel=1e-4)


@gpu
def test_hooks_and_schedules_under_the_graphs(tiny_darcy_root):
    """On a GPU: the gradient hooks between the two graphs see the captured gradients (norms as
    eager's, float32 rounding) and their in-place halving reaches the captured update; a per-epoch
    scheduler moves the graphs' learning rate as it moves the eager step's."""
    runs = hooks_against_eager(tiny_darcy_root, accelerator="gpu", steps=16,
                               lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=4))
    (eager_hooks, eager), (fast_hooks, fast) = runs[False], runs[True]
    assert fast.graphs[-1] and all(n == 2 for n in fast.graphs[-1])  # split: forward+backward, update
    torch.testing.assert_close(torch.tensor(fast_hooks.norms), torch.tensor(eager_hooks.norms), rtol=1e-3, atol=0)
    moved = eager.params[-1] - eager.params[0]
    assert float((fast.params[-1] - eager.params[-1]).norm() / moved.norm()) < 1e-2
