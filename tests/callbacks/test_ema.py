"""EMA of the weights: validation, best.ckpt selection and test use the average (equal to an
EMA computed by hand from the raw weights), with Lightning's automatic optimization and with
the fast step (its CUDA graphs on a GPU), and a resumed run continues the average. The DDP case
runs in ``tests/training/test_fast_step.py`` (two ranks against one process)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from flare_lightning.callbacks import EMA
from flare_lightning.training.metrics import RelativeL2Error
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args
from tests.test_cli import TINY_MODEL
from tests.training.test_fast_step import fit_tiny, flat, tiny_darcy

DECAY = 0.5


class Probe(L.Callback):
    """Records the raw weights after every optimizer step and the weights ``test`` runs on."""

    raw: list[dict[str, torch.Tensor]] = []
    tested: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        Probe.raw.append({k: v.detach().clone() for k, v in pl_module.model.named_parameters()})

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        Probe.tested = {k: v.detach().clone() for k, v in pl_module.model.named_parameters()}


def test_fit_with_ema_tests_the_averaged_weights(tiny_darcy_root, tmp_path):
    Probe.raw.clear()
    cli = run_cli(
        ["fit", f"--config={CONFIGS / 'quickstart.yaml'}", "--trainer.callbacks=[]",
         f"--config={CONFIGS / 'callbacks' / 'ema.yaml'}", f"--trainer.callbacks.init_args.decay={DECAY}",
         "--trainer.callbacks+=tests.callbacks.test_ema.Probe",
         *TINY_MODEL, *tiny_darcy_args(tiny_darcy_root, n_train=6, n_val=2), "--data.init_args.batch_size=2",
         "--trainer.max_epochs=1", *tiny_trainer_args(tmp_path)]
    )
    assert [type(cb).__name__ for cb in cli.trainer.callbacks].count("EMA") == 1
    assert len(Probe.raw) == 3  # 6 samples, batch 2
    ema = dict(Probe.raw[0])  # the first update copies the weights
    for raw in Probe.raw[1:]:
        ema = {k: DECAY * ema[k] + (1 - DECAY) * raw[k] for k in ema}
    assert Probe.tested, "test did not run"
    for name, value in Probe.tested.items():
        torch.testing.assert_close(value, ema[name], rtol=1e-6, atol=1e-7, msg=name)
    moved = [n for n in ema if not torch.allclose(Probe.raw[-1][n], ema[n])]
    assert len(moved) > len(ema) // 2  # the averaged weights are not the raw ones
    # the checkpoint holds the averaged weights and the statistics; the raw ones for resuming
    ckpt = torch.load(tmp_path / "test" / "version_0" / "checkpoints" / "best.ckpt", weights_only=False)
    name = next(iter(ema))
    torch.testing.assert_close(ckpt["state_dict"][f"model.{name}"], ema[name], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ckpt["current_model_state"][f"model.{name}"], Probe.raw[-1][name])
    assert bool(ckpt["state_dict"]["input_norm.fitted"])
    torch.testing.assert_close(ckpt["state_dict"]["target_norm.mean"], cli.datamodule.target_stats[0])


def eager_rel_l2(module, loader) -> float:
    """Relative L2 of ``module``'s weights in place on ``loader``, by the plain eager forward."""
    metric = RelativeL2Error().to(module.device)
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            metric.update(module(batch["x"], batch["mask"]), batch["y"], batch["mask"])
    return float(metric.compute())


class AverageProbe(L.Callback):
    """The raw weights at the start and after every optimizer step; at each validation, while EMA has the average
    in place (this callback comes first), the weights validated and their relative L2 by the eager
    forward, then what Lightning logged; the same for test."""

    def __init__(self) -> None:
        self.raw, self.validated, self.by_hand, self.logged = [], [], [], []
        self.tested: torch.Tensor | None = None
        self.test_by_hand = float("nan")

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = flat(pl_module.model.parameters())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.raw.append(flat(pl_module.model.parameters()))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validated.append(flat(pl_module.model.parameters()))
            self.by_hand.append(eager_rel_l2(pl_module, trainer.val_dataloaders))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.logged.append(float(trainer.callback_metrics["val/rel_l2"]))

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.tested = flat(pl_module.model.parameters())
        self.test_by_hand = eager_rel_l2(pl_module, trainer.test_dataloaders)


def ema_by_hand(raw: list[torch.Tensor], decay: float) -> list[torch.Tensor]:
    """The average after each step (the first update copies the weights)."""
    averages = [raw[0]]
    for w in raw[1:]:
        averages.append(decay * averages[-1] + (1 - decay) * w)
    return averages


RUNS = [pytest.param("cpu", False, id="cpu-eager"), pytest.param("cpu", True, id="cpu-fast_step"),
        pytest.param("gpu", True, id="gpu-graphs", marks=[pytest.mark.gpu, pytest.mark.skipif(
            not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("accelerator, fast", RUNS)
def test_validation_selection_and_test_use_the_average(tiny_darcy_root, tmp_path, accelerator, fast):
    """Validation scores the averaged weights (its logged rel. L2 is theirs, by the eager forward:
    on a GPU the fast step's graphs score them), best.ckpt is the epoch whose average scored best
    and holds that average (the raw weights beside it), and test evaluates it."""
    probe, checkpoint = AverageProbe(), ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/rel_l2")
    module, trainer, traj = fit_tiny(tiny_darcy_root, fast=fast, steps=8, accelerator=accelerator, val=True,
                                     default_root_dir=tmp_path, callbacks=(probe, EMA(decay=DECAY), checkpoint))
    assert traj.fast is fast and len(probe.raw) == 8 and len(probe.validated) == 2
    averages = ema_by_hand(probe.raw, DECAY)
    close = dict(rtol=1e-5, atol=1e-6) if accelerator == "gpu" else dict(rtol=1e-6, atol=1e-7)
    for epoch, validated in enumerate(probe.validated):
        torch.testing.assert_close(validated, averages[4 * epoch + 3], **close)
        assert not torch.allclose(validated, probe.raw[4 * epoch + 3])  # the average, not the raw weights
    assert probe.logged == pytest.approx(probe.by_hand, rel=1e-4 if accelerator == "gpu" else 1e-6)
    best = min(range(2), key=probe.logged.__getitem__)
    ckpt = torch.load(tmp_path / "best.ckpt", map_location="cpu", weights_only=False)
    names = [n for n, _ in module.model.named_parameters()]
    torch.testing.assert_close(flat(ckpt["state_dict"][f"model.{n}"] for n in names), probe.validated[best], **close)
    torch.testing.assert_close(flat(ckpt["current_model_state"][f"model.{n}"] for n in names),
                               probe.raw[4 * best + 3], **close)
    (result,) = trainer.test(module, datamodule=tiny_darcy(tiny_darcy_root), ckpt_path="best", verbose=False)
    torch.testing.assert_close(probe.tested, probe.validated[best], **close)
    assert result["test/rel_l2"] == pytest.approx(probe.test_by_hand, rel=1e-4 if accelerator == "gpu" else 1e-6)


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast_step"])
def test_the_average_resumes_where_it_stopped(tiny_darcy_root, tmp_path, fast):
    """Resumed from a checkpoint, training continues from its raw weights (``current_model_state``)
    and the average from its average: the final average is the one computed by hand from the
    checkpoint's average and the resumed run's raw weights (not a restarted average)."""
    folder = tmp_path / "stopped"
    fit_tiny(tiny_darcy_root, fast=fast, steps=8, default_root_dir=folder, stop_at=4, callbacks=(EMA(decay=DECAY),))
    path = next(folder.rglob("*.ckpt"))
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    probe = AverageProbe()
    module, trainer, traj = fit_tiny(tiny_darcy_root, fast=fast, steps=8, ckpt_path=str(path),
                                     callbacks=(probe, EMA(decay=DECAY)))
    assert trainer.global_step == 8 and len(probe.raw) == 4 and traj.fast is fast
    names = [f"model.{n}" for n, _ in module.model.named_parameters()]
    raw, average = (flat(ckpt[key][n] for n in names) for key in ("current_model_state", "state_dict"))
    torch.testing.assert_close(probe.start, raw, rtol=0, atol=0)
    assert not torch.allclose(raw, average)
    for weights in probe.raw:
        average = DECAY * average + (1 - DECAY) * weights
    torch.testing.assert_close(flat(module.model.parameters()), average, rtol=1e-6, atol=1e-7)  # after fit: the average
