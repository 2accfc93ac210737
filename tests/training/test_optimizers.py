"""Optimizer and schedule: AdamW + per-batch OneCycle by default, any torch optimizer or
scheduler from the CLI (``--model.optimizer``, ``--model.lr_scheduler``), the weight-decay
exemptions kept for every optimizer."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.models import FLARE
from flare_lightning.training.module import SurrogateModule
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args
from tests.test_cli import TINY_MODEL


def fit(root, tmp_path, *extra: str):
    return run_cli(
        ["fit", f"--config={CONFIGS / 'quickstart.yaml'}", *TINY_MODEL, *tiny_darcy_args(root),
         "--trainer.callbacks=[]", "--trainer.max_epochs=1", "--test_after_fit=false",
         *tiny_trainer_args(tmp_path), *extra]
    )


def exempt_names(module: SurrogateModule) -> set[str]:
    """Names of the parameters the optimizer's no-decay group holds."""
    optimizer = module.trainer.optimizers[0]
    by_id = {id(p): n for n, p in module.model.named_parameters()}
    plain = [g for g in optimizer.param_groups if g["weight_decay"] == 0.0]
    assert len(plain) == 1
    return {by_id[id(p)] for p in plain[0]["params"]}


def expected_exempt(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.dim() < 2 or n in model.no_weight_decay()}


def test_default_is_adamw_with_per_step_onecycle(tiny_darcy_root, tmp_path):
    cli = fit(tiny_darcy_root, tmp_path, "--model.lr=3e-3", "--model.weight_decay=0.25")
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["fused"]  # one kernel on CPU: a few ms less per quickstart step
    decay = [g for g in optimizer.param_groups if g["weight_decay"] != 0.0]
    assert len(decay) == 1 and decay[0]["weight_decay"] == 0.25
    names = exempt_names(cli.model)
    assert names == expected_exempt(cli.model.model) and any("latents" in n for n in names)
    config = cli.trainer.lr_scheduler_configs[0]
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR) and config.interval == "step"
    assert config.scheduler.total_steps == cli.trainer.global_step  # one schedule step per batch
    assert config.scheduler.optimizer.param_groups[0]["max_lr"] == 3e-3


def test_optimizer_and_scheduler_from_the_command_line(tiny_darcy_root, tmp_path):
    cli = fit(
        tiny_darcy_root, tmp_path,
        "--model.optimizer=torch.optim.SGD", "--model.optimizer.lr=0.05", "--model.optimizer.momentum=0.9",
        "--model.optimizer.weight_decay=0.125",
        "--model.lr_scheduler=torch.optim.lr_scheduler.StepLR", "--model.lr_scheduler.step_size=1",
        "--model.lr_scheduler.gamma=0.5",
    )
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.9
    assert exempt_names(cli.model) == expected_exempt(cli.model.model)  # exemptions kept
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.125, 0.0]
    config = cli.trainer.lr_scheduler_configs[0]
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.StepLR) and config.interval == "epoch"
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)  # one epoch: halved once
    # the checkpoint rebuilds the module, optimizer choice included
    module = SurrogateModule.load_from_checkpoint(tmp_path / "test" / "version_0" / "checkpoints" / "last.ckpt")
    assert module.build_optimizer(module.parameter_groups()).__class__ is torch.optim.SGD


def test_onecycle_follows_a_custom_optimizers_lr(tiny_darcy_root, tmp_path):
    cli = fit(tiny_darcy_root, tmp_path, "--model.optimizer=torch.optim.Adam", "--model.optimizer.lr=0.02")
    schedule = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(schedule, torch.optim.lr_scheduler.OneCycleLR)
    assert [g["max_lr"] for g in schedule.optimizer.param_groups] == [0.02, 0.02]


def test_build_optimizer_takes_overrides_for_a_custom_step():
    model = FLARE(in_dim=2, out_dim=1, channels=8, num_blocks=1, num_heads=2, num_latents=4)
    module = SurrogateModule(model, in_dim=2, out_dim=1, lr=2e-3)
    lr = torch.tensor(2e-3)
    optimizer = module.build_optimizer(module.parameter_groups(), capturable=True, lr=lr)
    assert optimizer.defaults["capturable"] and torch.is_tensor(optimizer.param_groups[0]["lr"])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_unknown_scheduler_name_is_reported():
    model = FLARE(in_dim=2, out_dim=1, channels=8, num_blocks=1, num_heads=2, num_latents=4)
    with pytest.raises(ValueError, match="model.scheduler must be 'onecycle' or 'constant'"):
        SurrogateModule(model, in_dim=2, out_dim=1, scheduler="cosine")
