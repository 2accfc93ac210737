"""Golden numerics: a short, fully seeded training run must reproduce a stored loss curve.

Regenerate after an intended numerical change with ``FLARE_UPDATE_GOLDEN=1 pytest tests/test_golden.py``
and say why in the commit message.
"""

from __future__ import annotations

import json
import os

import lightning as L
import torch

from datamodules.darcy import DarcyDataModule
from flare_lightning.models import FLARE
from flare_lightning.training.module import SurrogateModule
from tests.helpers import REPO

GOLDEN = REPO / "tests" / "assets" / "golden_darcy_loss.json"
STEPS = 12


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def loss_curve(root, mixer_backend: str = "explicit") -> list[float]:
    """Per-step training losses of a seeded tiny run on the ``tiny_darcy_root`` files."""
    L.seed_everything(0, verbose=False)
    dm = DarcyDataModule(root=str(root), train_file="train.mat", test_file="test.mat", n_train=8, n_val=4,
                         n_test=4, stride=1, batch_size=2, generate=False)
    model = FLARE(in_dim=3, out_dim=1, channels=16, num_blocks=2, num_heads=2, num_latents=8, mixer_backend=mixer_backend)
    module = SurrogateModule(model, in_dim=3, out_dim=1, lr=3e-3, scheduler="constant")
    recorder = LossRecorder()
    trainer = L.Trainer(max_steps=STEPS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[recorder], deterministic=True,
                        gradient_clip_val=1.0, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(module, datamodule=dm)
    return recorder.losses


def test_loss_curve_matches_golden(tiny_darcy_root):
    losses = loss_curve(tiny_darcy_root)
    assert len(losses) == STEPS
    if os.environ.get("FLARE_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps({"torch": torch.__version__, "losses": losses}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())["losses"]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(golden), rtol=2e-3, atol=1e-5)
    assert losses[-1] < losses[0]  # and it is a learning curve, not noise
