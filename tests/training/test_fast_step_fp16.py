"""The fast step under ``16-mixed`` keeps Lightning's GradScaler contract: the same skipped steps
and loss scale at every step, the same weights, gradient hooks seeing scaled gradients after
backward and unscaled ones before the optimizer step, and the scale carried by checkpoints.
Lightning turns a CPU's ``16-mixed`` flag into bf16, so these runs pass its fp16 precision plugin
with a CPU GradScaler; the step runs eagerly here, the GPU tests run its graphs."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from tests.training.test_fast_step import fit_tiny, gpu
from tests.training.test_fast_step_lightning import GradientHooks

# 2^30 overflows fp16's gradients (max 65504) for the first steps: they are skipped while the
# scale halves; after 4 clean steps in a row it doubles.
SCALER = dict(init_scale=2.0**30, growth_interval=4)


def fp16(device: str = "cpu", **scaler) -> dict:
    """Trainer arguments for fp16 autocast with a GradScaler (on a CPU too)."""
    plugin = MixedPrecision("16-mixed", device, scaler=torch.amp.GradScaler(device, **(SCALER | scaler)))
    return {"precision": None, "plugins": [plugin]}


class Scales(L.Callback):
    """The loss scale after every optimizer step, as the run holds it (Lightning's GradScaler, or
    the fast step's device copy), and the gradient norm each hook saw."""

    def __init__(self) -> None:
        self.scales: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        fast = pl_module._fast
        self.scales.append(trainer.precision_plugin.scaler.get_scale() if fast is None
                           else float(fast.loss_scale.scale))


def fit_fp16(root, fast: bool, steps: int = 40, accelerator: str = "cpu", scaler: dict | None = None, **fit_args):
    scales = Scales()
    callbacks = (scales, *fit_args.pop("callbacks", ()))
    device = "cuda" if accelerator == "gpu" else "cpu"
    module, trainer, traj = fit_tiny(root, fast=fast, steps=steps, accelerator=accelerator, callbacks=callbacks,
                                     trainer_args=fp16(device, **(scaler or {})), **fit_args)
    return module, trainer, traj, scales.scales


def skipped(scales: list[float]) -> int:
    return sum(b < a for a, b in zip([SCALER["init_scale"], *scales], scales))


@pytest.mark.slow
def test_fp16_fast_step_follows_lightnings_grad_scaler(tiny_darcy_root):
    """40 steps: the same overflowing steps skipped (the scale halving), the same growth after,
    the same weights after every epoch and the same Adam step counts as Lightning's own 16-mixed."""
    _, t_auto, auto, auto_scales = fit_fp16(tiny_darcy_root, fast=False)
    _, t_fast, fast, fast_scales = fit_fp16(tiny_darcy_root, fast=True)
    assert fast.fast and fast.automatic and not auto.fast_steps[-1]
    assert fast_scales == auto_scales
    assert skipped(auto_scales) >= 3 and any(b > a for a, b in zip(auto_scales, auto_scales[1:]))
    for a, b in zip(auto.params, fast.params):  # fp16 activations: rounding flips follow ulp-level weight changes
        assert float((b - a).norm() / a.norm()) < 1e-4
    steps = {float(s["step"]) for t in (t_auto, t_fast) for s in t.optimizers[0].state.values()}
    assert steps == {40.0 - skipped(auto_scales)}
    assert fast.losses[-1] < 0.95 * fast.losses[0]  # it learns (a quarter of the steps skipped)


def test_fp16_gradient_hooks_see_what_lightnings_grad_scaler_shows(tiny_darcy_root):
    """After backward the hooks see scaled gradients, before the optimizer step unscaled ones (the
    hook then halves them in place, and that reaches the update), as under Lightning's scaler."""
    runs = {}
    for fast in (False, True):
        hooks, before_step = GradientHooks(), []
        hook = hooks.on_before_optimizer_step

        def record(trainer, pl_module, optimizer, hook=hook, before_step=before_step):
            norms = [p.grad.norm() for p in pl_module.parameters()]
            before_step.append(float(torch.linalg.vector_norm(torch.stack(norms))))
            hook(trainer, pl_module, optimizer)

        hooks.on_before_optimizer_step = record
        _, _, traj, scales = fit_fp16(tiny_darcy_root, fast=fast, steps=8, callbacks=(hooks,),
                                      scaler={"init_scale": 2.0**21})  # a few steps overflow
        runs[fast] = hooks, before_step, traj, scales
    (hooks, before, eager, scales), (fast_hooks, fast_before, fast, fast_scales) = runs[False], runs[True]
    assert fast.fast_steps[-1].split and fast_hooks.calls == hooks.calls
    assert fast_scales == scales
    finite = [i for i, n in enumerate(hooks.norms) if torch.isfinite(torch.tensor(n))]
    assert 2 <= len(finite) < len(hooks.norms)  # some steps overflowed, some did not
    for i in finite:
        assert fast_hooks.norms[i] == pytest.approx(hooks.norms[i], rel=1e-4)
        assert fast_before[i] == pytest.approx(before[i], rel=1e-4)
        assert before[i] < hooks.norms[i] / 1000  # unscaled by then
    assert float((fast.params[-1] - eager.params[-1]).norm() / eager.params[-1].norm()) < 1e-4


def test_fp16_fast_step_resumes_with_its_loss_scale(tiny_darcy_root, tmp_path):
    """Stopped after 8 of 16 steps: the checkpoint holds the scale the fast step reached (not
    Lightning's unused scaler's), and the resumed run ends where an uninterrupted one does."""
    folder = tmp_path / "run"
    _, _, _, scales = fit_fp16(tiny_darcy_root, fast=True, steps=16, default_root_dir=folder, stop_at=8)
    ckpt = next(folder.rglob("*.ckpt"))
    state = torch.load(ckpt, weights_only=False)["MixedPrecision"]
    assert state["scale"] == scales[7] != SCALER["init_scale"]
    _, trainer, resumed, resumed_scales = fit_fp16(tiny_darcy_root, fast=True, steps=16, ckpt_path=str(ckpt))
    _, _, whole, whole_scales = fit_fp16(tiny_darcy_root, fast=True, steps=16)
    assert trainer.global_step == 16 and resumed_scales == whole_scales[8:]
    torch.testing.assert_close(resumed.params[-1], whole.params[-1], rtol=1e-5, atol=1e-6)


@gpu
def test_fp16_captured_step_follows_lightnings_grad_scaler(tiny_darcy_root):
    """On a GPU: the captured 16-mixed step skips the overflowing steps Lightning's GradScaler
    skips and its loss curve follows the eager one's (fp16: 2% over 40 steps). The compiled loss
    rounds otherwise than eager kernels, so the step at the edge of overflow may go either way:
    the scale is not let grow (growth_interval 1000) and the skips may differ by that one step."""
    args = dict(steps=40, accelerator="gpu", scaler={"growth_interval": 1000})
    _, _, eager, scales = fit_fp16(tiny_darcy_root, fast=False, **args)
    _, _, graph, graph_scales = fit_fp16(tiny_darcy_root, fast=True, **args)
    assert graph.fast and graph.graphs[-1] and all(graph.graphs[-1])  # replayed captured graphs
    assert skipped(scales) >= 3 and abs(skipped(graph_scales) - skipped(scales)) <= 1
    ref, losses = torch.tensor(eager.losses), torch.tensor(graph.losses)
    assert float(((losses - ref).abs() / ref).max()) < 2e-2
    assert losses[-1] < 0.95 * losses[0]
