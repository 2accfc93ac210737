"""Attention-logit growth in trained checkpoints (issue 11): per attention layer, the largest
|logit| and the mean softmax entropy against uniform attention, and the error of the same
weights evaluated in fp32 and under bf16 autocast, on one batch of the config's data.

    python benchmarks/attention_logits.py --config configs/darcy.yaml --config configs/baselines/transformer_darcy.yaml \\
        --ckpt runs/accuracy/transformer_darcy/seed0_full/checkpoints/{best,last}.ckpt [--split val]

Runs on the CPU (no training); the data is the config's, made or read as `flare fit` would.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flare_lightning.analysis import attention_logit_stats  # noqa: E402
from flare_lightning.cli import make_cli  # noqa: E402
from flare_lightning.training.metrics import relative_l2  # noqa: E402
from flare_lightning.training.module import SurrogateModule  # noqa: E402


def first_batch(configs: list[Path], split: str, overrides: list[str]) -> dict[str, torch.Tensor]:
    """The first batch of the configs' ``split`` loader (fit-stage setup; the test split is not read)."""
    with mock.patch("sys.argv", ["flare"]):
        cli = make_cli([*(f"--config={config}" for config in configs), *overrides], run=False)
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader}[split]()
    return next(iter(loader))


@torch.no_grad()
def report(ckpt: Path, batch: dict[str, torch.Tensor], max_rows: int) -> list[str]:
    """Table lines for one checkpoint."""
    module = SurrogateModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    mask = module.network_mask(batch)
    fp32 = module(batch["x"], mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = module(batch["x"], mask)
    lines = [f"### {ckpt}", "",
             f"rel. L2 on this batch: fp32 {relative_l2(fp32, batch['y'], batch['mask']).mean():.4e}, "
             f"bf16 autocast {relative_l2(bf16.float(), batch['y'], batch['mask']).mean():.4e}", "",
             "| attention | max abs logit | mean entropy (nats) | uniform (nats) |", "|---|---|---|---|"]
    for s in attention_logit_stats(module, batch["x"], mask, max_rows=max_rows):
        lines.append(f"| {s.layer} | {s.max_abs_logit:.4g} | {s.entropy:.2f} | {s.max_entropy:.2f} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, action="append", required=True,
                   help="the run's config files in order, as given to flare fit (their data section is used)")
    p.add_argument("--ckpt", type=Path, nargs="+", required=True)
    p.add_argument("--split", choices=["train", "val"], default="train")
    p.add_argument("--max-rows", type=int, default=256, help="query rows sampled per sample, head and attention")
    p.add_argument("overrides", nargs="*", help="more config overrides (e.g. --data.init_args.root=...), after --")
    args = p.parse_args(argv)
    for ckpt in args.ckpt:
        if not ckpt.is_file():
            raise SystemExit(f"--ckpt {ckpt}: no such file")
    torch.manual_seed(0)
    batch = first_batch(args.config, args.split, args.overrides)
    lines = [f"{args.split} batch of {' + '.join(map(str, args.config))}: {tuple(batch['x'].shape)}", ""]
    for ckpt in args.ckpt:
        lines += report(ckpt, batch, args.max_rows)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
