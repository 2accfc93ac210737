"""fp16's loss scale on the device (``DeviceLossScale``) and the fast step under it follow
``torch.amp.GradScaler`` exactly: the same scale after every step (backoff on an overflow,
growth after a run of clean steps), the same skipped steps, and otherwise the same clipped
Adam/AdamW update as GradScaler's unscale_/clip/step/update sequence, in float64."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.training.adam_update import clipped_adam_update_, group_lists, prepare_state
from flare_lightning.training.fast_step import FastTrainStep
from flare_lightning.training.loss_scale import DeviceLossScale
from tests.training.test_fast_step import SkippingLoss, skipping_batches

OVERFLOWS = {0, 3, 4, 9}  # steps whose gradients are non-finite (the first step's included)


def test_scale_follows_grad_scaler_through_backoff_and_growth():
    """40 steps, overflowing on a random third of them, growth every 3 clean steps: scale and
    growth tracker equal GradScaler's after each update, the unscaled gradients too."""
    torch.manual_seed(0)
    ref = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_factor=4.0, backoff_factor=0.25, growth_interval=3)
    ours = DeviceLossScale("cpu", init_scale=2.0**10, growth_factor=4.0, backoff_factor=0.25, growth_interval=3)
    param = torch.nn.Parameter(torch.zeros(5))
    opt = torch.optim.SGD([param], lr=0.0)
    grown = backed_off = 0
    for _ in range(40):
        grad = torch.randn(5) * float(ours.scale)
        if torch.rand(()) < 0.3:
            grad[2] = float("nan") if torch.rand(()) < 0.5 else float("inf")
        param.grad = grad.clone()
        ref.scale(torch.ones(()))  # GradScaler makes its scale on first use
        ref.unscale_(opt)
        mine = [grad.clone()]
        before = float(ours.scale)
        ours.unscale_(mine)
        ref.step(opt)
        ref.update()
        ours.update_()
        assert bool(ours.skip) == (not torch.isfinite(grad).all())
        if bool(ours.skip) is False:
            torch.testing.assert_close(mine[0], param.grad, rtol=0, atol=0)
        assert ours.state_dict() == ref.state_dict()
        grown += float(ours.scale) > before
        backed_off += float(ours.scale) < before
    assert grown >= 2 and backed_off >= 2  # both directions exercised


def test_state_round_trips_through_grad_scaler_format():
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=7)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 256.0, "_growth_tracker": 5})
    ours = DeviceLossScale.of(scaler, "cpu")
    assert ours.state_dict() == scaler.state_dict()
    other = DeviceLossScale("cpu")
    scale_tensor = other.scale
    other.load_state_dict(ours.state_dict())
    assert other.scale is scale_tensor and other.state_dict() == scaler.state_dict()  # in place: graphs read it
    with pytest.raises(ValueError, match=r"lacks \['_growth_tracker'\]"):
        DeviceLossScale("cpu").load_state_dict({"scale": 1.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                "growth_interval": 3})
    with pytest.raises(ValueError, match="backoff_factor"):
        DeviceLossScale("cpu", backoff_factor=1.5)


@pytest.mark.parametrize("cls", [torch.optim.AdamW, torch.optim.Adam], ids=lambda c: c.__name__)
def test_skipped_update_changes_nothing_and_a_kept_one_is_the_plain_update(cls):
    """``skip`` 1.0: parameters, moments and counts keep their values (Adam's coupled weight decay
    included, the first step of a fresh state included). ``skip`` 0.0: bit for bit the update
    without a skip argument (the twin takes the kept steps only)."""
    torch.manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64)) for _ in range(2)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opts = [cls(ps, lr=1e-2, weight_decay=0.1) for ps in (params, twins)]
    for o in opts:
        prepare_state(o, torch.device("cpu"), capturable=False)
    hp = [torch.tensor(v, dtype=torch.float64) for v in (1e-2, 0.9, 0.99)]
    adamw = cls is torch.optim.AdamW
    for it in range(4):
        grads = [torch.randn(4, 3, dtype=torch.float64) for _ in params]
        skip = torch.tensor(1.0 if it in (0, 2) else 0.0)
        before = [(p.detach().clone(), dict((k, v.clone()) for k, v in opts[0].state[p].items())) for p in params]
        for ps, g_list in ((params, grads), (twins, grads)):
            for p, g in zip(ps, g_list):
                p.grad = g.clone()
        clipped_adam_update_([group_lists(opts[0].param_groups[0], opts[0].state, *hp, adamw, shared_step=True)],
                             0.5, "norm", skip=skip)
        if skip:
            for p, (value, state) in zip(params, before):
                assert torch.equal(p, value) and all(torch.equal(opts[0].state[p][k], v) for k, v in state.items())
            continue
        clipped_adam_update_([group_lists(opts[1].param_groups[0], opts[1].state, *hp, adamw, shared_step=True)],
                             0.5, "norm")
        for p, q in zip(params, twins):
            assert torch.equal(p, q)
            assert all(torch.equal(opts[0].state[p][k], opts[1].state[q][k]) for k in ("exp_avg", "exp_avg_sq"))
            assert float(opts[0].state[p]["step"]) == float(opts[1].state[q]["step"])
    assert all(float(opts[0].state[p]["step"]) == 2 for p in params)  # the two skipped steps did not count


def overflowing_batches(steps: int) -> list[dict]:
    """``skipping_batches`` (some steps leave a parameter without gradient) with an inf input on
    the OVERFLOWS steps."""
    batches = skipping_batches(steps)
    for i in OVERFLOWS:
        batches[i]["x"][0, 0, 0] = float("inf")
    return batches


def grad_scaler_step(model, optimizer, scaler, batch: dict, clip: float) -> None:
    """The reference: Lightning's 16-mixed order with torch's pieces (scaled backward, unscale_,
    clip_grad_norm_, GradScaler's step that skips on an overflow, update)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(model(batch)[0].mean()).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
    scaler.step(optimizer)
    scaler.update()


@pytest.mark.parametrize("cls", [torch.optim.AdamW, torch.optim.Adam], ids=lambda c: c.__name__)
@pytest.mark.parametrize("split", [False, True], ids=["one_part", "split"])
def test_fast_step_with_loss_scale_is_grad_scaler_and_adam(cls, split):
    """12 steps under a changing schedule, 4 of them overflowing (the first included), a parameter
    missing gradients on others: parameters, moments, step counts and the scale equal torch's
    GradScaler with Adam/AdamW after every step (float64; eager, the arithmetic the graphs run)."""
    ours, ref = SkippingLoss(), SkippingLoss()
    groups = lambda m: [{"params": [m.weight, m.extra], "weight_decay": 0.1}, {"params": [m.bias], "weight_decay": 0.0}]
    opt, opt_ref = cls(groups(ours), lr=0.05), cls(groups(ref), lr=0.05)
    settings = dict(init_scale=2.0**12, growth_interval=2)
    scaler = torch.amp.GradScaler("cpu", **settings)
    step = FastTrainStep(ours, opt, clip_val=0.5, capture=False, split=split,
                         loss_scale=DeviceLossScale("cpu", **settings))
    scales = []
    for i, batch in enumerate(overflowing_batches(12)):
        for o in (opt, opt_ref):
            o.param_groups[0].update(lr=0.05 / (1 + i), betas=(0.9 - 0.01 * i, 0.99))
        step(batch)
        grad_scaler_step(ref, opt_ref, scaler, batch, 0.5)
        assert bool(step.loss_scale.skip) == (i in OVERFLOWS)
        assert step.loss_scale.state_dict() == scaler.state_dict(), f"step {i}"
        scales.append(float(step.loss_scale.scale))
        for p, q in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
            if q in opt_ref.state:
                torch.testing.assert_close(opt.state[p]["exp_avg_sq"], opt_ref.state[q]["exp_avg_sq"], rtol=1e-12,
                                           atol=1e-16)
                assert float(opt.state[p]["step"]) == float(opt_ref.state[q]["step"])
    assert float(opt.state[ours.weight]["step"]) == 12 - len(OVERFLOWS)
    moves = [b / a for a, b in zip([2.0**12, *scales], scales)]
    assert 0.5 in moves and 2.0 in moves  # backed off and grew


def test_two_rank_step_unscales_the_averaged_gradients():
    """Under DDP the fast step averages the scaled gradients, then unscales them (as DDP's reducer
    and Lightning's GradScaler do): an overflow on the other rank alone reaches the average, so
    every rank skips that step. The other rank is faked: its gradient a fixed vector times the
    scale, inf on step 2."""
    ours, ref = SkippingLoss(), SkippingLoss()
    opt, opt_ref = torch.optim.AdamW(ours.parameters(), lr=0.05), torch.optim.AdamW(ref.parameters(), lr=0.05)
    scale = DeviceLossScale("cpu", init_scale=2.0**8, growth_interval=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3)
    numel = sum(p.numel() for p in ours.parameters())
    other = torch.randn(numel, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    step_index = [0]

    def other_rank(i: int) -> torch.Tensor:
        g = other * float(scale.scale)
        if i == 2:
            g[1] = float("inf")
        return g

    def all_reduce(flat: torch.Tensor) -> None:
        flat.add_(other_rank(step_index[0]))

    step = FastTrainStep(ours, opt, clip_val=0.5, capture=False, world_size=2, all_reduce=all_reduce, loss_scale=scale)
    batches = [b for b in skipping_batches(12) if b["x"].shape[1] == 5]  # every parameter has a gradient
    for i, batch in enumerate(batches):
        step_index[0] = i
        opt_ref.zero_grad(set_to_none=True)
        scaler.scale(ref(batch)[0].mean()).backward()
        params = list(ref.parameters())
        flat = torch.cat([p.grad.flatten() for p in params]).add_(other_rank(i)).div_(2)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.view_as(p).clone()
        scaler.unscale_(opt_ref)
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        scaler.step(opt_ref)
        scaler.update()
        step(batch)
        assert bool(scale.skip) == (i == 2)
        assert scale.state_dict() == scaler.state_dict()
        for p, q in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    assert float(opt.state[ours.weight]["step"]) == len(batches) - 1


def test_zero_where_zeroes_every_tensor_or_none():
    """The skip's zeroing: every tensor (two dtypes, one not contiguous, inf and NaN inside) zeroed
    when the condition holds, each left bit for bit when it does not."""
    from flare_lightning.training.adam_update import zero_where_

    def tensors():
        torch.manual_seed(4)
        a, b = torch.randn(3, 4), torch.randn(5, dtype=torch.float64)
        a[1, 2], b[0] = float("inf"), float("nan")
        return [a, b, torch.randn(4, 3).t(), torch.randn(7)]

    kept = tensors()
    zero_where_(kept, torch.tensor(False))
    for t, ref in zip(kept, tensors()):
        torch.testing.assert_close(t, ref, rtol=0, atol=0, equal_nan=True)
        assert t.stride() == ref.stride()
    zeroed = tensors()
    zero_where_(zeroed, torch.tensor(True))
    assert all(torch.equal(t, torch.zeros_like(t)) for t in zeroed)
