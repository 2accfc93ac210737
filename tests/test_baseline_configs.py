"""configs/baselines/*.yaml: fragments composed after their dataset's config (the same data, no
copy of it), every Darcy, quickstart and elasticity baseline trains through `flare fit` (tiny
model, tiny data in the real layout), the proxy ones build, the protocols are the authors', the
dataset config's FLARE options never leak into a baseline's model, and no two runs share a
logger name."""

from __future__ import annotations

import inspect
from functools import cache
from unittest import mock

import pytest
import torch
import yaml

from flare_lightning.cli import make_cli
from flare_lightning.models import PerceiverIO, Transformer, Transolver

from tests.datamodules.tiny_data import elasticity as tiny_elasticity
from tests.helpers import CONFIGS, resolved_config, run_cli, tiny_darcy_args, tiny_trainer_args

BASELINES = sorted((CONFIGS / "baselines").glob("*.yaml"))
MODELS = {"transolver": Transolver, "transformer": Transformer, "perceiverio": PerceiverIO}
TINY = {
    "transolver": ["channels=16", "num_blocks=2", "num_heads=2", "num_slices=4"],
    "transformer": ["channels=16", "num_blocks=2", "num_heads=2"],
    "perceiverio": ["channels=16", "num_blocks=2", "num_heads=2", "num_latents=8"],
}
# The authors' pdebench/__main__.py defaults: (pct_start, div_factor, final_div_factor, clip), batch per dataset.
PROTOCOL = {"transolver": (0.3, 25.0, 1e4, 0.1), "transformer": (0.1, 25.0, 1e4, 1.0), "perceiverio": (0.1, 25.0, 1e4, 1.0)}
BATCH = {"transolver": {"darcy": 4, "elasticity": 1}, "transformer": {"darcy": 2, "elasticity": 2},
         "perceiverio": {"darcy": 2, "elasticity": 2}}
# What a fragment may set beside its model: the protocol's trainer options, the run's name, the batch.
FRAGMENT_TRAINER = {"gradient_clip_val", "logger", "enable_progress_bar", "callbacks"}


def load(path):
    return yaml.safe_load(path.read_text())


def dataset_of(config) -> str:
    return config.stem.split("_", 1)[1]


def composed(config) -> list[str]:
    """The documented command's configs: the dataset's, then the baseline fragment."""
    return [f"--config={CONFIGS / (dataset_of(config) + '.yaml')}", f"--config={config}"]


@cache
def resolved(config) -> dict:
    return resolved_config(composed(config))


def tiny_model(model: str) -> list[str]:
    return [f"--model.model.init_args.{arg}" for arg in TINY[model]]


@pytest.mark.slow
@pytest.mark.parametrize("config", [p for p in BASELINES if p.stem.endswith(("_darcy", "_quickstart"))], ids=lambda p: p.stem)
def test_fast_dev_run_on_tiny_darcy(config, tiny_darcy_root, tmp_path):
    model = config.stem.split("_")[0]
    cli = run_cli(
        ["fit", *composed(config), "--trainer.fast_dev_run=1", *tiny_model(model), *tiny_darcy_args(tiny_darcy_root),
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
        ["fit", *composed(config), "--trainer.fast_dev_run=1", *tiny_model(model), f"--data.init_args.root={root}",
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
        cli = make_cli([*composed(config), *tiny_model(model), *tiny_trainer_args(tmp_path)], run=False)
    assert type(cli.model.model).__name__.lower() == model


@pytest.mark.parametrize("config", BASELINES, ids=lambda p: p.stem)
def test_fragments_restate_nothing_of_the_dataset_config(config):
    """A baseline is its model, its protocol's trainer options, its run name and its batch: the data
    comes from the dataset config, so FLARE and the baseline train on the same samples."""
    cfg = load(config)
    assert set(cfg) <= {"trainer", "model", "data"}
    assert set(cfg["trainer"]) <= FRAGMENT_TRAINER and set(cfg["trainer"]["logger"]) == {"init_args"}
    assert set(cfg["trainer"]["logger"]["init_args"]) == {"name"}
    assert set(cfg.get("data", {"init_args": {}})) == {"init_args"} and set(cfg.get("data", {"init_args": {}})["init_args"]) <= {"batch_size"}
    assert f"flare fit --config configs/{dataset_of(config)}.yaml --config configs/baselines/{config.name}" in config.read_text()
    data, flare = resolved(config)["data"], load(CONFIGS / f"{dataset_of(config)}.yaml")["data"]
    assert data["class_path"] == flare["class_path"]
    assert {k: v for k, v in data["init_args"].items() if k in flare["init_args"] and k != "batch_size"} == \
        {k: v for k, v in flare["init_args"].items() if k != "batch_size"}


@pytest.mark.parametrize("config", BASELINES, ids=lambda p: p.stem)
def test_the_dataset_configs_model_options_never_leak_into_a_baseline(config):
    """Composing replaces FLARE by the baseline's class; an option the dataset config gives FLARE
    that the baseline's class also takes (act, num_latents, ...) must not carry over."""
    model = config.stem.split("_")[0]
    given = load(config)["model"]["model"]["init_args"]
    signature = inspect.signature(MODELS[model].__init__).parameters
    got = resolved(config)["model"]["model"]
    assert got["class_path"] == f"flare_lightning.models.{MODELS[model].__name__}"
    for name, value in got["init_args"].items():
        want = given[name] if name in given else signature[name].default
        if name not in ("in_dim", "out_dim"):  # linked from the data when the classes are made
            assert value == want, (name, value, want)


@pytest.mark.parametrize("config", [p for p in BASELINES if not p.stem.endswith("_quickstart")], ids=lambda p: p.stem)
def test_paper_protocol_of_each_model(config):
    model, dataset = config.stem.split("_", 1)
    cfg = resolved(config)
    pct, div, final, clip = PROTOCOL[model]
    m = cfg["model"]
    assert (m["lr"], m["pct_start"], m["div_factor"], m["final_div_factor"]) == (1e-3, pct, div, final)
    assert cfg["trainer"]["gradient_clip_val"] == clip
    assert m["weight_decay"] == (1e-4 if dataset in ("drivaerml", "lpbf") else 1e-5)
    assert cfg["trainer"]["max_epochs"] == (250 if dataset == "lpbf" else 500)
    assert m["loss"] == ("darcy_grad" if dataset == "darcy" else "rel_l2")
    if dataset in BATCH[model]:
        assert cfg["data"]["init_args"]["batch_size"] == BATCH[model][dataset]
    assert cfg["trainer"]["enable_progress_bar"] is False


def test_quickstart_baselines_share_the_quickstart_budget():
    qs = resolved_config([f"--config={CONFIGS / 'quickstart.yaml'}"])
    for config in (p for p in BASELINES if p.stem.endswith("_quickstart")):
        cfg = resolved(config)
        assert cfg["data"] == qs["data"] and cfg["model"]["lr"] == qs["model"]["lr"]
        assert cfg["trainer"]["max_epochs"] == qs["trainer"]["max_epochs"]
        assert cfg["trainer"]["callbacks"] is None  # none of the quickstart FLARE's analysis callbacks


def test_every_run_has_its_own_logger_name():
    names = [load(p)["trainer"]["logger"]["init_args"]["name"] for p in [*CONFIGS.glob("*.yaml"), *BASELINES]]
    assert len(names) == len(set(names)), names
    assert all(resolved(p)["trainer"]["logger"]["init_args"]["name"] == p.stem.replace("_drivaerml", "_drivaerml_proxy")
               .replace("_lpbf", "_lpbf_proxy") for p in BASELINES)


def test_drivaerml_configs_carry_the_authors_values():
    forty_k, one_m = load(CONFIGS / "drivaerml.yaml")["model"], load(CONFIGS / "drivaerml_1m.yaml")["model"]
    assert forty_k["weight_decay"] == 1e-4 and forty_k["lr"] == 1e-3
    assert (one_m["lr"], one_m["pct_start"], one_m["eps"]) == (5e-4, 0.05, 1e-6)
