"""The fast step's Adam/AdamW update (the arithmetic its CUDA graph captures) equals torch's
optimizers in float64, on torch's own state: lr and betas changing every step as OneCycle
changes them, clipping over all groups, parameters that miss gradients on some steps; and it
is refused for every optimizer it does not reproduce."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.training.adam_update import check_adam, clipped_adam_update_, group_lists, plain_state, prepare_state

ADAMS = [torch.optim.AdamW, torch.optim.Adam]


def hparams(lr: float, beta1: float, beta2: float = 0.99) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=torch.float64) for v in (lr, beta1, beta2)]


@pytest.mark.parametrize("cls", ADAMS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("lagging", [False, True], ids=["shared_count", "lagging_parameter"])
def test_update_matches_torch(cls, lagging):
    """Every parameter steps every time: one step count serves the group (``shared_step``). Or
    the first parameter misses gradients on two steps: torch skips it (no step, no decay), so
    counts differ from then on, and its bias correction must use its own count."""
    torch.manual_seed(1)
    ref = [torch.nn.Parameter(torch.randn(4, 2, dtype=torch.float64)) for _ in range(3)]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt_ref = cls(ref, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99))
    opt = cls(ours, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99))
    prepare_state(opt, torch.device("cpu"), capturable=False)
    for it in range(6):
        lr, beta1 = 2e-2 + 1e-3 * it, 0.8 + 0.03 * it
        opt_ref.param_groups[0].update(lr=lr, betas=(beta1, 0.99))
        for i, (p, q) in enumerate(zip(ref, ours)):
            skip = lagging and i == 0 and it in (0, 3)
            p.grad = None if skip else torch.randn_like(p)
            q.grad = None if skip else p.grad.clone()
        opt_ref.step()
        lists = group_lists(opt.param_groups[0], opt.state, *hparams(lr, beta1), cls is torch.optim.AdamW,
                            shared_step=not lagging)
        clipped_adam_update_([lists], None, "norm")
    assert [int(opt.state[q]["step"]) for q in ours] == ([4, 6, 6] if lagging else [6, 6, 6])
    for p, q in zip(ref, ours):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.state[q]["exp_avg_sq"], opt_ref.state[p]["exp_avg_sq"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("clip", ["norm", "value"])
def test_clipping_over_groups_then_adamw_matches_torch(clip):
    torch.manual_seed(1)
    shapes = [(5, 3), (3,), (4, 4), (2,)]
    ref = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]

    def groups_of(ps):
        return [{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "weight_decay": 0.0}]

    opt_ref = torch.optim.AdamW(groups_of(ref), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    opt = torch.optim.AdamW(groups_of(ours), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    prepare_state(opt, torch.device("cpu"), capturable=False)
    for it in range(5):
        lr, beta1 = 1e-2 * (it + 1), 0.85 + 0.02 * it
        for g in opt_ref.param_groups:
            g.update(lr=lr, betas=(beta1, 0.99))
        for p, q in zip(ref, ours):
            p.grad = 3 * torch.randn_like(p)  # norms above the threshold: clipping acts
            q.grad = p.grad.clone()
        if clip == "norm":
            torch.nn.utils.clip_grad_norm_(ref, 0.5)
        else:
            torch.nn.utils.clip_grad_value_(ref, 0.5)
        opt_ref.step()
        groups = [group_lists(g, opt.state, *hparams(lr, beta1), True, shared_step=True) for g in opt.param_groups]
        clipped_adam_update_(groups, 0.5, clip)
    for p, q in zip(ref, ours):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(opt.state[q]["exp_avg"], opt_ref.state[p]["exp_avg"], rtol=1e-12, atol=1e-14)


class AdamVariant(torch.optim.Adam):
    """A subclass may step differently: refused like any other optimizer."""


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.NAdam(ps), lambda ps: torch.optim.RAdam(ps), lambda ps: torch.optim.Adamax(ps),
    lambda ps: torch.optim.SGD(ps, lr=0.1), lambda ps: AdamVariant(ps),
    lambda ps: torch.optim.Adam(ps, amsgrad=True), lambda ps: torch.optim.AdamW(ps, maximize=True),
], ids=["NAdam", "RAdam", "Adamax", "SGD", "Adam_subclass", "amsgrad", "maximize"])
def test_optimizers_the_update_does_not_reproduce_are_refused(make):
    with pytest.raises(ValueError, match="model.fast_step"):
        check_adam(make([torch.nn.Parameter(torch.zeros(2))]))


def test_adam_and_adamw_are_accepted():
    for cls in ADAMS:
        check_adam(cls([torch.nn.Parameter(torch.zeros(2))], weight_decay=0.1))


def test_state_is_completed_and_given_back_in_torchs_plain_format():
    """``prepare_state`` gives every parameter state and float32 step counts; ``plain_state``
    hands a capturable checkpoint's state back to torch's eager step, which then resumes it."""
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([p, q], lr=0.1)
    opt.state[p].update(step=torch.tensor(7, dtype=torch.int64), exp_avg=torch.ones(3), exp_avg_sq=torch.ones(3))
    prepare_state(opt, torch.device("cpu"), capturable=True)
    assert opt.state[p]["step"].dtype == torch.float32 and float(opt.state[p]["step"]) == 7
    assert float(opt.state[q]["step"]) == 0 and opt.state[q]["exp_avg"].shape == (2,)
    assert opt.param_groups[0]["capturable"]
    plain_state(opt)
    assert not opt.param_groups[0]["capturable"]
    p.grad, q.grad = torch.ones(3), torch.ones(2)
    opt.step()  # torch refuses capturable groups on CPU: this runs only in the plain format
    assert float(opt.state[p]["step"]) == 8
