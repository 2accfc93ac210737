"""EMA of the weights from a config: the fit runs (the sanity check included), and test
evaluates the averaged weights, equal to an EMA computed by hand from the raw ones."""

from __future__ import annotations

import lightning as L
import torch

from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args
from tests.test_cli import TINY_MODEL

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
