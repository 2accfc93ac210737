"""Mixed precision: bf16 and fp16 autocast training steps track fp32, loss and metrics
stay in fp32 (or wider), and ``--trainer.precision`` runs end to end."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision

from datamodules import DarcyDataModule
from flare_lightning.models import FLARE
from flare_lightning.training.module import SurrogateModule
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args


def module_and_batch(**options):
    torch.manual_seed(0)
    module = SurrogateModule(FLARE(3, 1, channels=32, num_blocks=2, num_heads=4, num_latents=16), 3, 1, **options)
    module.input_norm.set_stats(torch.zeros(3), torch.ones(3))
    module.target_norm.set_stats(torch.zeros(1), torch.ones(1))
    x = torch.randn(2, 200, 3)
    mask = torch.ones(2, 200, dtype=torch.bool)
    mask[1, 150:] = False
    y = torch.sin(3 * x[..., :1]) + x[..., 1:2] * x[..., 2:3]
    return module, {"x": x, "y": y, "pos": x[..., :2], "mask": mask}


def loss_and_grads(module, batch, dtype):
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss = module.training_step(batch, 0)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in module.model.parameters() if p.grad is not None])
    return loss, grads


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)], ids=["bf16", "fp16"])
def test_autocast_training_step_matches_fp32(dtype, tol):
    module, batch = module_and_batch()
    module.log = lambda *args, **kwargs: None  # no trainer attached
    ref_loss, ref_grads = loss_and_grads(module, batch, None)
    loss, grads = loss_and_grads(module, batch, dtype)
    assert loss.dtype == torch.float32, "the loss must be accumulated in fp32"
    assert abs(loss.item() - ref_loss.item()) < tol * ref_loss.item()
    cosine = torch.nn.functional.cosine_similarity(grads.double(), ref_grads.double(), dim=0)
    assert cosine > 0.99, f"gradient direction drifted under {dtype}: cosine {cosine:.4f}"
    metric = module.metrics["train_rel_l2"]
    assert metric.error_sum.dtype == torch.float64  # metric sums never in half precision


def tiny_fit_args(root, tmp_path, name):
    return [
        "fit",
        f"--config={CONFIGS / 'quickstart.yaml'}",
        *tiny_trainer_args(tmp_path, name),
        *tiny_darcy_args(root),
        "--trainer.max_epochs=1",
        "--trainer.callbacks=[]",
    ]


def test_cli_fit_bf16_mixed_end_to_end(tiny_darcy_root, tmp_path):
    cli = run_cli([*tiny_fit_args(tiny_darcy_root, tmp_path, "bf16"), "--trainer.precision=bf16-mixed"])
    assert cli.trainer.precision == "bf16-mixed"
    metrics = json.loads(next((tmp_path / "bf16").glob("version_*/test_metrics.json")).read_text())
    assert "test/rel_l2" in metrics and all(v is not None and math.isfinite(v) for k, v in metrics.items() if k.startswith("test/"))


def test_fp16_mixed_fit_with_grad_scaler(tiny_darcy_root, tmp_path):
    """Real fp16 autocast with a gradient scaler (the CLI's ``16-mixed`` means this on GPUs;
    on CPU Lightning substitutes bf16, so the plugin is given explicitly here)."""
    torch.manual_seed(0)
    dm = DarcyDataModule(str(tiny_darcy_root), "train.mat", "test.mat", n_train=8, n_val=4, n_test=4, batch_size=4)
    module = SurrogateModule(FLARE(3, 1, channels=16, num_blocks=2, num_heads=4, num_latents=8), 3, 1)
    plugin = MixedPrecision("16-mixed", "cpu")
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", plugins=[plugin], default_root_dir=tmp_path, **quiet)
    trainer.fit(module, dm)
    assert plugin.scaler is not None and plugin.scaler.get_scale() > 0
    (result,) = trainer.test(module, dm, verbose=False)
    assert math.isfinite(result["test/rel_l2"]) and result["test/rel_l2"] < 1.5
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_cli_fit_mixed_precision_on_gpu(tiny_darcy_root, tmp_path, precision):
    run_cli([*tiny_fit_args(tiny_darcy_root, tmp_path, "gpu"), f"--trainer.precision={precision}",
             "--trainer.accelerator=gpu", "--trainer.devices=1"])
    metrics = json.loads(next((tmp_path / "gpu").glob("version_*/test_metrics.json")).read_text())
    scores = {k: v for k, v in metrics.items() if k.startswith("test/")}  # beside "checkpoint", "data", ...
    assert "test/rel_l2" in scores and all(v is not None and math.isfinite(v) for v in scores.values())


def test_eval_fp32_evaluates_in_float32_under_autocast():
    """``eval_fp32``: the evaluation forward ignores the ambient bf16 autocast (bit-equal to the
    plain fp32 forward); without it the forward runs in bf16 and differs."""
    module, batch = module_and_batch(eval_fp32=True)
    plain, _ = module_and_batch()
    module.eval(), plain.eval()
    with torch.no_grad():
        fp32 = module(batch["x"], batch["mask"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            kept = module._predict(batch)
            rounded = plain._predict(batch)
    assert kept.dtype == torch.float32
    torch.testing.assert_close(kept, fp32, rtol=0, atol=0)
    assert not torch.allclose(rounded.float(), fp32, rtol=1e-4, atol=1e-5)


def test_bf16_fit_with_eval_fp32_tests_in_float32(tiny_darcy_root, tmp_path):
    """Trained under bf16 autocast, tested with ``eval_fp32``: the logged test rel. L2 is the fp32
    evaluation of the trained weights, computed here by hand."""
    from flare_lightning.training.metrics import RelativeL2Error

    dm = DarcyDataModule(str(tiny_darcy_root), "train.mat", "test.mat", n_train=8, n_val=4, n_test=4, batch_size=4)
    results = {}
    for eval_fp32 in (True, False):
        torch.manual_seed(0)
        module = SurrogateModule(FLARE(3, 1, channels=16, num_blocks=2, num_heads=4, num_latents=8), 3, 1,
                                 eval_fp32=eval_fp32)
        quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", precision="bf16-mixed", default_root_dir=tmp_path, **quiet)
        trainer.fit(module, dm)
        (results[eval_fp32],) = trainer.test(module, dm, verbose=False)
        if eval_fp32:
            metric = RelativeL2Error()
            module.eval()
            with torch.no_grad():
                for batch in dm.test_dataloader():
                    metric.update(module(batch["x"], batch["mask"]), batch["y"], batch["mask"])
            by_hand = float(metric.compute())
    assert results[True]["test/rel_l2"] == pytest.approx(by_hand, rel=1e-6)
    # the same weights tested under bf16 autocast: rounding moves the metric (here ~2e-5 relative)
    assert abs(results[False]["test/rel_l2"] - by_hand) > 1e-6 * by_hand
