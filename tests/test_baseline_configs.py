"""configs/baselines/*.yaml: every Darcy, quickstart and elasticity config trains through `flare fit`
(tiny model, tiny data in the real layout), the proxy configs build, the protocols are the authors',
and no two runs share a logger name."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import yaml

from flare_lightning.cli import make_cli

from tests.datamodules.tiny_data import elasticity as tiny_elasticity
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args

BASELINES = sorted((CONFIGS / "baselines").glob("*.yaml"))
TINY = {
    "transolver": ["channels=16", "num_blocks=2", "num_heads=2", "num_slices=4"],
    "transformer": ["channels=16", "num_blocks=2", "num_heads=2"],
    "perceiverio": ["channels=16", "num_blocks=2", "num_heads=2", "num_latents=8"],
}
# The authors' pdebench/__main__.py defaults: (pct_start, div_factor, final_div_factor, clip), batch per dataset.
PROTOCOL = {"transolver": (0.3, 25.0, 1e4, 0.1), "transformer": (0.1, 25.0, 1e4, 1.0), "perceiverio": (0.1, 25.0, 1e4, 1.0)}
BATCH = {"transolver": {"darcy": 4, "elasticity": 1}, "transformer": {"darcy": 2, "elasticity": 2},
         "perceiverio": {"darcy": 2, "elasticity": 2}}


def load(path):
    return yaml.safe_load(path.read_text())


def tiny_model(model: str) -> list[str]:
    return [f"--model.model.init_args.{arg}" for arg in TINY[model]]


@pytest.mark.slow
@pytest.mark.parametrize("config", [p for p in BASELINES if p.stem.endswith(("_darcy", "_quickstart"))], ids=lambda p: p.stem)
def test_fast_dev_run_on_tiny_darcy(config, tiny_darcy_root, tmp_path):
    model = config.stem.split("_")[0]
    cli = run_cli(
        ["fit", f"--config={config}", "--trainer.fast_dev_run=1", *tiny_model(model), *tiny_darcy_args(tiny_darcy_root),
         "--data.init_args.batch_size=2", *tiny_trainer_args(tmp_path)]
    )
    assert cli.trainer.global_step == 1
    assert type(cli.model.model).__name__.lower() == model
    assert cli.model.model.in_dim == 3 and cli.model.model.out_dim == 1  # linked from the data
    assert torch.isfinite(cli.trainer.callback_metrics["test/rel_l2"])


@pytest.mark.slow
@pytest.mark.parametrize("config", [p for p in BASELINES if p.stem.endswith("_elasticity")], ids=lambda p: p.stem)
def test_fast_dev_run_on_tiny_elasticity(config, tmp_path):
    model = config.stem.split("_")[0]
    root = tiny_elasticity(tmp_path / "elasticity").root  # 9 cells of 12 points in the Geo-FNO .npy layout
    cli = run_cli(
        ["fit", f"--config={config}", "--trainer.fast_dev_run=1", *tiny_model(model), f"--data.init_args.root={root}",
         "--data.init_args.generate=false", "--data.init_args.n_train=4", "--data.init_args.n_val=1",
         "--data.init_args.n_test=2", "--data.init_args.batch_size=2", *tiny_trainer_args(tmp_path)]
    )
    assert cli.trainer.global_step == 1
    assert type(cli.model.model).__name__.lower() == model
    assert cli.model.model.in_dim == 2 and cli.model.model.out_dim == 1  # (x, y) -> von Mises stress, from the data
    assert torch.isfinite(cli.trainer.callback_metrics["test/rel_l2"])


@pytest.mark.parametrize("config", [p for p in BASELINES if not p.stem.endswith(("_darcy", "_quickstart", "_elasticity"))],
                         ids=lambda p: p.stem)
def test_other_configs_build(config, tmp_path):
    """The DrivAerML and LPBF proxy configs parse and instantiate (data is made only when fit starts)."""
    model = config.stem.split("_")[0]
    with mock.patch("sys.argv", ["flare"]):
        cli = make_cli([f"--config={config}", *tiny_model(model), *tiny_trainer_args(tmp_path)], run=False)
    assert type(cli.model.model).__name__.lower() == model


@pytest.mark.parametrize("config", [p for p in BASELINES if not p.stem.endswith("_quickstart")], ids=lambda p: p.stem)
def test_paper_protocol_of_each_model(config):
    model, dataset = config.stem.split("_", 1)
    cfg = load(config)
    pct, div, final, clip = PROTOCOL[model]
    m = cfg["model"]
    assert (m["lr"], m["pct_start"], m["div_factor"], m["final_div_factor"]) == (1e-3, pct, div, final)
    assert cfg["trainer"]["gradient_clip_val"] == clip
    assert m["weight_decay"] == (1e-4 if dataset in ("drivaerml", "lpbf") else 1e-5)
    assert cfg["trainer"]["max_epochs"] == (250 if dataset == "lpbf" else 500)
    assert m.get("loss", "rel_l2") == ("darcy_grad" if dataset == "darcy" else "rel_l2")
    if dataset in BATCH[model]:
        assert cfg["data"]["init_args"]["batch_size"] == BATCH[model][dataset]
    flare = load(CONFIGS / f"{dataset}.yaml")["data"]["init_args"]
    assert {k: v for k, v in cfg["data"]["init_args"].items() if k != "batch_size"} == \
        {k: v for k, v in flare.items() if k != "batch_size"}  # the same samples as FLARE's config


def test_quickstart_baselines_share_the_quickstart_budget():
    qs = load(CONFIGS / "quickstart.yaml")
    for config in (p for p in BASELINES if p.stem.endswith("_quickstart")):
        cfg = load(config)
        assert cfg["data"] == qs["data"] and cfg["model"]["lr"] == qs["model"]["lr"]
        assert cfg["trainer"]["max_epochs"] == qs["trainer"]["max_epochs"]


def test_every_run_has_its_own_logger_name():
    names = [load(p)["trainer"]["logger"]["init_args"]["name"] for p in [*CONFIGS.glob("*.yaml"), *BASELINES]]
    assert len(names) == len(set(names)), names
    assert all(load(p)["trainer"]["logger"]["init_args"]["name"] == p.stem.replace("_drivaerml", "_drivaerml_proxy")
               .replace("_lpbf", "_lpbf_proxy") for p in BASELINES)


def test_drivaerml_configs_carry_the_authors_values():
    forty_k, one_m = load(CONFIGS / "drivaerml.yaml")["model"], load(CONFIGS / "drivaerml_1m.yaml")["model"]
    assert forty_k["weight_decay"] == 1e-4 and forty_k["lr"] == 1e-3
    assert (one_m["lr"], one_m["pct_start"], one_m["eps"]) == (5e-4, 0.05, 1e-6)
