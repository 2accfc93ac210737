"""last.ckpt follows the latest epoch even when the monitored metric stops improving."""

from __future__ import annotations

import torch

from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args


def test_last_checkpoint_is_the_latest_epoch(tiny_darcy_root, tmp_path):
    # mode=max on a falling error: only epoch 0 is ever "best", so Lightning's own
    # save_last would leave last.ckpt at epoch 0.
    run_cli(["fit", f"--config={CONFIGS / 'quickstart.yaml'}", *tiny_darcy_args(tiny_darcy_root),
             *tiny_trainer_args(tmp_path, "ckpt"), "--data.init_args.batch_size=4", "--trainer.max_epochs=3",
             "--trainer.callbacks=[]", "--test_after_fit=false", "--checkpoint.mode=max"])
    ckpts = next((tmp_path / "ckpt").glob("version_*")) / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(ckpts / "best.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3 * 2 and last["epoch"] == 2  # 8 samples / batch 4 = 2 steps per epoch
    assert best["global_step"] == 2
