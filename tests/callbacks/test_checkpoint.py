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


def test_a_resumed_fit_keeps_the_best_selection_and_an_evaluation_leaves_it(tiny_darcy_root, tmp_path):
    """Resuming restores which epoch is best (a worse epoch after the resume does not take best.ckpt);
    test/predict restore nothing into the callback (its folder is the evaluation's, and it saves nothing)."""
    import pytest

    from tests.test_resume import Kill, KilledForTest

    # mode=max on a falling error: epoch 0 stays the best, unless the resume forgot it
    args = ["fit", f"--config={CONFIGS / 'quickstart.yaml'}", *tiny_darcy_args(tiny_darcy_root),
            *tiny_trainer_args(tmp_path, "ckpt"), "--data.init_args.batch_size=4", "--trainer.max_epochs=3",
            "--trainer.callbacks=[tests.test_resume.Kill]", "--test_after_fit=false", "--checkpoint.mode=max"]
    with pytest.raises(KilledForTest):
        run_cli([*args, "--trainer.callbacks.init_args.at_step=4"])  # after epochs 0 and 1
    ckpts = next((tmp_path / "ckpt").glob("version_*")) / "checkpoints"
    Kill.start_steps.clear()
    cli = run_cli([*args, "--ckpt_path=last"])
    assert Kill.start_steps == [4]
    callback = cli.trainer.checkpoint_callback
    best = torch.load(ckpts / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["global_step"] == 2 and callback.best_model_score is not None
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 6

    evaluation = run_cli(["test", f"--config={CONFIGS / 'quickstart.yaml'}", "--ckpt_path=best",
                          *tiny_darcy_args(tiny_darcy_root), *tiny_trainer_args(tmp_path, "ckpt"),
                          "--data.init_args.batch_size=4", "--trainer.callbacks=[]", "--checkpoint.mode=max"])
    restored = evaluation.trainer.checkpoint_callback
    assert (restored.best_model_path, restored.best_model_score) == ("", None)  # nothing of the fit's selection


def test_a_run_folder_moved_to_another_place_resumes_with_its_best_selection(tiny_darcy_root, tmp_path):
    """A run folder carried to another machine or path (the GPU sessions' accuracy runs; a cluster's
    scratch space) resumes from its own last.ckpt with the best selection moved along: the saved
    best and last paths point into the new folder and a worse epoch does not take best.ckpt."""
    import shutil

    import pytest

    from tests.test_resume import Kill, KilledForTest

    def args(root):
        return ["fit", f"--config={CONFIGS / 'quickstart.yaml'}", *tiny_darcy_args(tiny_darcy_root),
                *tiny_trainer_args(root, "ckpt"), "--data.init_args.batch_size=4", "--trainer.max_epochs=3",
                "--trainer.callbacks=[tests.test_resume.Kill]", "--test_after_fit=false", "--checkpoint.mode=max"]

    with pytest.raises(KilledForTest):
        run_cli([*args(tmp_path / "here"), "--trainer.callbacks.init_args.at_step=4"])
    shutil.move(tmp_path / "here", tmp_path / "there")
    Kill.start_steps.clear()
    cli = run_cli([*args(tmp_path / "there"), "--ckpt_path=last"])
    assert Kill.start_steps == [4]
    ckpts = next((tmp_path / "there" / "ckpt").glob("version_*")) / "checkpoints"
    assert torch.load(ckpts / "best.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2
    callback = cli.trainer.checkpoint_callback
    assert callback.best_model_path == str(ckpts / "best.ckpt") and callback.best_model_score is not None
    assert all(str(ckpts) in path for path in callback.best_k_models)
