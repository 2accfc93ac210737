"""AttentionLogits during a tiny Transformer fit: the files and scalars are the analysis of the
weights of their epoch on the first validation samples; the growth warning names the layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flare_lightning.analysis import attention_logit_stats
from flare_lightning.analysis.curves import read_metrics
from flare_lightning.callbacks import AttentionLogits

from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args

TINY = ["--model.model.init_args.channels=16", "--model.model.init_args.num_blocks=2",
        "--model.model.init_args.num_heads=2", "--data.init_args.batch_size=2"]


def fit(root, tmp_path, *callback_args):
    return run_cli(["fit", f"--config={CONFIGS / 'darcy.yaml'}", f"--config={CONFIGS / 'baselines' / 'transformer_darcy.yaml'}",
                    "--trainer.max_epochs=2",
                    "--trainer.limit_train_batches=2", "--trainer.log_every_n_steps=1", *TINY, *tiny_darcy_args(root),
                    "--trainer.callbacks+=flare_lightning.callbacks.AttentionLogits",
                    "--trainer.callbacks.every_n_epochs=1", *callback_args, *tiny_trainer_args(tmp_path)])


def test_files_and_scalars_are_the_analysis_of_each_epoch(tiny_darcy_root, tmp_path):
    cli = fit(tiny_darcy_root, tmp_path)
    run = next((tmp_path / "test").glob("version_*"))
    out = run / "attention_logits"
    assert sorted(p.name for p in out.glob("*.json")) == ["epoch_0000.json", "epoch_0001.json", "test.json"]
    last = json.loads((out / "epoch_0001.json").read_text())
    assert (last["stage"], last["epoch"]) == ("fit", 1)
    dm, module = cli.datamodule, cli.model.eval()
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))  # batch 2, in order: the callback's two samples
    want = attention_logit_stats(module, batch["x"], batch["mask"])  # final weights = those of epoch 1
    assert [layer["layer"] for layer in last["layers"]] == ["attention 0", "attention 1"]
    for got, ref in zip(last["layers"], want):
        assert got["max_abs_logit"] == pytest.approx(ref.max_abs_logit, rel=1e-9)
        assert (got["entropy"], got["max_entropy"]) == pytest.approx((ref.entropy, ref.max_entropy), rel=1e-9)
    metrics = read_metrics(run)
    logged = {k: v[~np.isnan(v)] for k, v in metrics.items() if k.startswith("attn_logits/")}
    assert len(logged["attn_logits/max_abs"]) == 2  # epochs 0 and 1
    assert list(metrics["epoch"][~np.isnan(metrics["attn_logits/max_abs"])]) == [0, 1]
    assert logged["attn_logits/max_abs"][-1] == pytest.approx(max(s.max_abs_logit for s in want), rel=1e-6)
    assert logged["attn_logits/entropy/attention_1"][-1] == pytest.approx(want[1].entropy, rel=1e-6)
    assert json.loads((out / "test.json").read_text())["stage"] == "test"


def test_growth_warning_names_the_layer_once(tiny_darcy_root, tmp_path):
    with pytest.warns(UserWarning, match=r"attention 0 has \|logit\| .* > 1e-09 at epoch 0 .*attention-logit growth") as seen:
        fit(tiny_darcy_root, tmp_path, "--trainer.callbacks.warn_above=1e-9")
    growth = [w for w in seen if "attention-logit growth" in str(w.message)]
    assert sorted(str(w.message).split(" has ")[0] for w in growth) == ["AttentionLogits: attention 0", "AttentionLogits: attention 1"]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_rows must be >= 1 and warn_above > 0, got 0"):
        AttentionLogits(max_rows=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs of the fast step need a GPU")
def test_with_the_graphed_fast_step_on_gpu(tiny_darcy_root, tmp_path):
    """The callback's eager forward runs beside the fast step's CUDA graphs without disturbing them."""
    cli = fit(tiny_darcy_root, tmp_path, "--model.fast_step=true", "--trainer.precision=bf16-mixed", "--trainer.accelerator=gpu")
    run = next((tmp_path / "test").glob("version_*"))
    assert (run / "attention_logits" / "epoch_0001.json").is_file()
    assert torch.isfinite(cli.trainer.callback_metrics["test/rel_l2"])
