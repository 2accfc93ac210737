"""benchmarks/attention_logits.py on a checkpoint of a tiny Transformer fit: its table is the
analysis of that checkpoint's weights on the config's first batch."""

from __future__ import annotations

import re

import pytest
import torch

from flare_lightning.analysis import attention_logit_stats
from flare_lightning.training.metrics import relative_l2
from flare_lightning.training.module import SurrogateModule

from tests.helpers import CONFIGS, import_benchmark, run_cli, tiny_darcy_args, tiny_trainer_args

TINY = ["--model.model.init_args.channels=16", "--model.model.init_args.num_blocks=2",
        "--model.model.init_args.num_heads=2", "--data.init_args.batch_size=2"]


def test_table_of_a_trained_checkpoint(tiny_darcy_root, tmp_path, capsys):
    configs = [CONFIGS / "darcy.yaml", CONFIGS / "baselines" / "transformer_darcy.yaml"]
    data = [*tiny_darcy_args(tiny_darcy_root), *TINY]
    cli = run_cli(["fit", *(f"--config={c}" for c in configs), "--trainer.max_epochs=1",
                   "--trainer.limit_train_batches=2", *data, *tiny_trainer_args(tmp_path)])
    ckpt = next(p for p in (tmp_path / "test").rglob("last.ckpt"))
    script = import_benchmark("attention_logits")
    lines = script.main([*(a for c in configs for a in ("--config", str(c))), "--ckpt", str(ckpt), "--split", "val",
                         "--", *data])
    assert "| attention | max abs logit |" in capsys.readouterr().out
    rows = [line.split(" | ") for line in lines if re.match(r"\| attention \d", line)]
    assert [r[0] for r in rows] == ["| attention 0", "| attention 1"]  # one per block

    batch = script.first_batch(configs, "val", data)
    module = SurrogateModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    assert torch.equal(module.model.blocks[0].attn.qkv.weight, cli.model.model.blocks[0].attn.qkv.weight)
    stats = attention_logit_stats(module, batch["x"], module.network_mask(batch))
    assert [float(r[1]) for r in rows] == pytest.approx([s.max_abs_logit for s in stats], rel=1e-3)
    assert [float(r[2]) for r in rows] == pytest.approx([s.entropy for s in stats], abs=0.006)
    with torch.no_grad():
        err = relative_l2(module(batch["x"], None), batch["y"], batch["mask"]).mean()
    assert f"fp32 {err:.4e}" in "\n".join(lines)


def test_missing_checkpoint_is_named(tmp_path):
    script = import_benchmark("attention_logits")
    with pytest.raises(SystemExit, match="--ckpt .*nope.ckpt: no such file"):
        script.main(["--config", str(CONFIGS / "darcy.yaml"), "--ckpt", str(tmp_path / "nope.ckpt")])
