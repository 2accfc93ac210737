"""Optimizer and schedule: AdamW + per-batch OneCycle by default, any torch optimizer or
scheduler from the CLI (``--model.optimizer``, ``--model.lr_scheduler``), the weight-decay
exemptions kept for every optimizer."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.models import FLARE
from flare_lightning.training.module import SurrogateModule
from flare_lightning.training.schedule import one_cycle, one_cycle_pct
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


@pytest.mark.parametrize("pct_start", [0.5, 0.3, 0.25, 0.2, 0.1, 0.05, 0.02, 0.01])
def test_onecycle_runs_every_step_count(pct_start):
    """torch's OneCycleLR divides by zero where pct_start * steps == 1 (5% of 20); ours steps through
    every count, keeps pct_start elsewhere, and still warms up to the peak and anneals from it."""
    for total in range(1, 121):
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.AdamW([param], lr=1e-3)
        schedule = one_cycle(optimizer, total, pct_start, div_factor=25.0, final_div_factor=1e4)
        lrs = [optimizer.param_groups[0]["lr"]]
        for _ in range(total):
            optimizer.step()
            schedule.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        assert all(0 < lr <= 1e-3 * (1 + 1e-9) for lr in lrs), (total, pct_start)
        if pct_start * total != 1:
            assert one_cycle_pct(pct_start, total) == pct_start
        if total >= 3:
            assert lrs[total - 1] < 1e-3 / 100  # the last step's lr: annealed
        if pct_start * total >= 1 and total > 2:  # a warm-up, also where torch's would end at step 0
            assert lrs[0] < 1e-3 / 10 and max(lrs) > 5 * lrs[0]


def test_fit_of_twenty_steps_at_five_percent_warm_up(tiny_darcy_root, tmp_path):
    """The 1M config's pct_start (0.05) over a 20-step fit: torch's schedule alone raised at its first step."""
    cli = fit(tiny_darcy_root, tmp_path, "--model.pct_start=0.05", "--trainer.max_steps=20", "--trainer.max_epochs=-1")
    schedule = cli.trainer.lr_scheduler_configs[0].scheduler
    assert schedule.total_steps == 20 and schedule.last_epoch == 20 and cli.trainer.global_step == 20
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] < cli.model.hparams.lr / 10  # annealed
