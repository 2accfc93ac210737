"""The fast training step (``fast_step``) follows Lightning's automatic optimization step
for step: same parameters after every epoch, same logged loss, same global step, and it
resumes and runs under DDP. On CUDA the step is a replayed CUDA graph; here on CPU the
same sequence runs eagerly, with the same update, and the GPU tests compare the graph with it
(``scripts/gpu_tests.sh`` runs them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules.darcy import DarcyDataModule
from flare_lightning.training.fast_step import FastTrainStep, GraphedForward
from flare_lightning.training.metrics import relative_l2
from flare_lightning.models import FLARE
from flare_lightning.training.module import SurrogateModule
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


class Trajectory(L.Callback):
    """Flat parameter vector after every training epoch, the epoch's logged train loss, and
    how the steps ran (the fast step's object, its CUDA graphs per captured batch shape at the
    epoch's end, since teardown releases them; Lightning's automatic optimization)."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.params: list[torch.Tensor] = []
        self.losses: list[float] = []
        self.fast_steps: list[FastTrainStep | None] = []
        self.graphs: list[list[int]] = []  # per epoch: graphs of each captured shape ([] if none)
        self.automatic = True
        self.stop_at = stop_at

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.fast_steps.append(pl_module._fast)
        captured = {} if pl_module._fast is None else pl_module._fast._captured
        self.graphs.append([len(entry.graphs) for entry in captured.values()])
        self.automatic = self.automatic and pl_module.automatic_optimization
        if self.stop_at is not None and trainer.global_step >= self.stop_at:
            trainer.should_stop = True
        self.params.append(flat(pl_module.parameters()))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if "train/loss_epoch" in trainer.callback_metrics:
            self.losses.append(float(trainer.callback_metrics["train/loss_epoch"]))

    def on_train_end(self, trainer, pl_module) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss_epoch"]))

    @property
    def fast(self) -> bool:
        """Every epoch trained with the fast step."""
        return all(step is not None for step in self.fast_steps)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten().double().cpu() for t in tensors])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 distance of ``a`` from ``b``."""
    return float((a - b).norm() / b.norm())


def tiny_darcy(root: Path, batch_size: int = 2) -> DarcyDataModule:
    """Tiny Darcy data: 8 training samples (4 batches), 4 validation, 4 test."""
    return DarcyDataModule(root=str(root), train_file="train.mat", test_file="test.mat", n_train=8, n_val=4,
                           n_test=4, stride=1, batch_size=batch_size, generate=False)


def fit_tiny(root: Path, fast: bool, steps: int, accelerator: str = "cpu", precision: str = "32-true",
             ckpt_path: str | None = None, default_root_dir: Path | None = None, stop_at: int | None = None,
             backend: str | None = None, callbacks: tuple = (), val: bool = False, logger=False,
             module_cls: type = SurrogateModule, trainer_args: dict | None = None, **module_args):
    """A seeded tiny Darcy fit (OneCycle, clipping 1.0; ``val``: validating every epoch):
    returns (module, trainer, trajectory)."""
    L.seed_everything(0, verbose=False)
    backend = backend or ("explicit" if accelerator == "cpu" else "auto")
    model = FLARE(in_dim=3, out_dim=1, channels=16, num_blocks=2, num_heads=2, num_latents=8, mixer_backend=backend)
    module = module_cls(model, in_dim=3, out_dim=1, **{"lr": 3e-3, **module_args, "fast_step": fast})
    traj = Trajectory(stop_at)
    trainer = L.Trainer(**{
        "max_steps": steps, "logger": logger, "enable_checkpointing": default_root_dir is not None,
        "default_root_dir": default_root_dir, "enable_progress_bar": False, "enable_model_summary": False,
        "callbacks": [traj, *callbacks], "gradient_clip_val": 1.0, "limit_val_batches": None if val else 0,
        "num_sanity_val_steps": 0, "accelerator": accelerator, "devices": 1, "precision": precision,
        **(trainer_args or {})})
    trainer.fit(module, datamodule=tiny_darcy(root), ckpt_path=ckpt_path)
    return module, trainer, traj


@pytest.mark.slow
def test_fast_step_follows_automatic_optimization(tiny_darcy_root):
    # 40 steps = 10 epochs of 4 batches (200 on the GPU below): OneCycle's lr and beta1
    # change every step, clipping is on.
    _, t_auto, auto = fit_tiny(tiny_darcy_root, fast=False, steps=40)
    module, t_fast, fast = fit_tiny(tiny_darcy_root, fast=True, steps=40)
    assert t_fast.global_step == t_auto.global_step == 40
    assert fast.fast and not auto.fast_steps[-1]  # the fast path really ran...
    assert fast.automatic  # ...inside Lightning's automatic optimization
    assert len(fast.params) == len(auto.params) == 10
    for epoch, (a, b) in enumerate(zip(auto.params, fast.params)):
        # float32: the fast step's Adam and torch's fused one round differently (1.5e-6 after 40 steps)
        assert rel(b, a) < 1e-5, f"parameters differ after epoch {epoch}"
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(auto.losses), rtol=1e-5, atol=1e-7)
    assert fast.losses[-1] < 0.9 * fast.losses[0]  # a learning curve
    for t in (t_auto, t_fast):  # the loss is the metric here: the metric saw every step of the epoch
        assert float(t.callback_metrics["train/rel_l2"]) == pytest.approx(float(t.callback_metrics["train/loss_epoch"]),
                                                                         rel=1e-6)
    assert t_fast.lr_scheduler_configs[0].scheduler.last_epoch == 40  # stepped once per batch


def test_fast_step_resumes_like_the_automatic_step(tiny_darcy_root, tmp_path):
    """Stopped after 8 of 16 steps and resumed from the checkpoint: the fast step ends where
    Lightning's automatic optimization ends after the same interruption."""
    finals = {}
    for fast in (False, True):
        folder = tmp_path / f"fast_{fast}"
        fit_tiny(tiny_darcy_root, fast=fast, steps=16, default_root_dir=folder, stop_at=8)
        ckpt = next(folder.rglob("*.ckpt"))
        _, trainer, resumed = fit_tiny(tiny_darcy_root, fast=fast, steps=16, ckpt_path=str(ckpt))
        assert trainer.global_step == 16
        finals[fast] = resumed.params[-1]
    torch.testing.assert_close(finals[True], finals[False], rtol=1e-5, atol=1e-6)


def test_a_second_fit_of_the_same_module_takes_the_fast_step_again(tiny_darcy_root):
    """Fitting one module twice (new trainers, as in a notebook): each fit builds its own fast
    step and drops it at the end, and both fits together match Lightning's automatic
    optimization doing the same."""
    finals = {}
    for fast in (False, True):
        L.seed_everything(0, verbose=False)
        model = FLARE(in_dim=3, out_dim=1, channels=16, num_blocks=2, num_heads=2, num_latents=8,
                      mixer_backend="explicit")
        module = SurrogateModule(model, in_dim=3, out_dim=1, lr=3e-3, fast_step=fast)
        steps, seen = [], []
        for _ in range(2):
            traj = Trajectory()
            trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, gradient_clip_val=1.0, limit_val_batches=0,
                                accelerator="cpu", devices=1, callbacks=[traj])
            trainer.fit(module, datamodule=tiny_darcy(tiny_darcy_root))
            steps.append(trainer.global_step)
            seen.append(traj.fast_steps[-1])
            assert module._fast is None  # dropped with the fit
        assert steps == [4, 4]
        assert all(s is not None for s in seen) is fast and (not fast or seen[0] is not seen[1])
        finals[fast] = torch.cat([p.detach().flatten() for p in module.parameters()])
    # float32, two optimizer lives: a few 1e-6 of summation-order noise (one step moves ~1e-3)
    torch.testing.assert_close(finals[True], finals[False], rtol=1e-5, atol=5e-6)


def test_checkpoint_of_a_graph_run_resumes_on_cpu(tiny_darcy_root, tmp_path):
    """A GPU fast-step checkpoint holds capturable Adam groups (torch refuses those off CUDA):
    written like that here, it resumes on CPU and ends where the same checkpoint without the
    flag ends."""
    folder = tmp_path / "stopped"
    fit_tiny(tiny_darcy_root, fast=True, steps=16, default_root_dir=folder, stop_at=8)
    plain = next(folder.rglob("*.ckpt"))
    ckpt = torch.load(plain, map_location="cpu", weights_only=False)
    for state in ckpt["optimizer_states"]:
        for group in state["param_groups"]:
            group["capturable"] = True  # as the fast step leaves them on a GPU (prepare_state)
        for per_param in state["state"].values():
            per_param["step"] = torch.as_tensor(per_param["step"], dtype=torch.float32)
    graph_run = tmp_path / "graph_run.ckpt"
    torch.save(ckpt, graph_run)
    _, trainer, resumed = fit_tiny(tiny_darcy_root, fast=True, steps=16, ckpt_path=str(graph_run))
    assert trainer.global_step == 16
    assert not any(g["capturable"] for g in trainer.optimizers[0].param_groups)
    _, _, reference = fit_tiny(tiny_darcy_root, fast=True, steps=16, ckpt_path=str(plain))
    torch.testing.assert_close(resumed.params[-1], reference.params[-1], rtol=1e-6, atol=1e-7)


def test_fast_step_refuses_gradient_accumulation(tiny_darcy_root):
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        fit_tiny(tiny_darcy_root, fast=True, steps=2, trainer_args={"accumulate_grad_batches": 2})


def test_fast_step_option_from_the_cli(tiny_darcy_root, tmp_path):
    cli = run_cli(["fit", f"--config={CONFIGS / 'quickstart.yaml'}", *tiny_darcy_args(tiny_darcy_root),
                   *tiny_trainer_args(tmp_path), "--trainer.max_epochs=2", "--trainer.accelerator=cpu",
                   "--trainer.callbacks=[]", "--model.fast_step=true"])
    assert cli.trainer.global_step == 2 * cli.trainer.num_training_batches == 2 * 2  # 8 samples, batch 4
    assert torch.isfinite(torch.tensor(float(cli.trainer.callback_metrics["test/rel_l2"])))


@pytest.mark.slow
def test_fast_step_under_two_process_ddp_matches_one_process(tiny_darcy_root, tmp_path):
    """The fast step all-reduces gradients itself (DDP's reducer cannot follow a captured
    backward): two ranks with batch 2 must follow one process with batch 4, and so must the
    EMA of the weights that both keep (checkpointed as ``state_dict``, the raw weights beside)."""
    def args(batch: int) -> list[str]:
        return ["fit", f"--config={CONFIGS / 'quickstart.yaml'}", *tiny_darcy_args(tiny_darcy_root, n_val=3, n_test=3),
                f"--data.init_args.batch_size={batch}", "--trainer.max_epochs=3", "--trainer.accelerator=cpu",
                "--trainer.callbacks=[]", "--model.fast_step=true",
                "--trainer.callbacks+=flare_lightning.callbacks.EMA", "--trainer.callbacks.decay=0.5"]
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "flare_lightning", *args(2), *tiny_trainer_args(two, "ddp"),
           "--trainer.strategy=ddp", "--trainer.devices=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"DDP run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    one = tmp_path / "one"
    run_cli([*args(4), *tiny_trainer_args(one, "single"), "--trainer.devices=1"])

    def last_weights(root: Path, key: str) -> dict[str, torch.Tensor]:
        ckpt = next(root.rglob("last.ckpt"))
        return torch.load(ckpt, map_location="cpu", weights_only=True)[key]

    for key in ("state_dict", "current_model_state"):  # the average, the raw weights
        ddp, single = last_weights(two, key), last_weights(one, key)
        names = [n for n, v in single.items() if v.is_floating_point() and n.startswith("model.")]
        a = torch.cat([ddp[n].flatten().double() for n in names])
        b = torch.cat([single[n].flatten().double() for n in names])
        gap = ((a - b).norm() / b.norm()).item()
        assert gap < 1e-5, f"{key}: two-rank fast step ends {gap:.2e} (relative L2 of all weights) from one process"
    raw, average = last_weights(one, "current_model_state"), last_weights(one, "state_dict")
    assert not torch.allclose(flat(raw[n] for n in names), flat(average[n] for n in names))


class SkippingLoss(torch.nn.Module):
    """A least-squares model whose ``extra`` parameter takes part only in batches of 5 points,
    so it misses gradients on other steps (its Adam step count falls behind)."""

    def __init__(self, dtype: torch.dtype = torch.float64, device: str = "cpu") -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(3, 1, generator=g, dtype=dtype).to(device))
        self.bias = torch.nn.Parameter(torch.zeros(1, dtype=dtype, device=device))
        self.extra = torch.nn.Parameter(torch.ones(1, dtype=dtype, device=device))

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pred = batch["x"] @ self.weight + self.bias
        if batch["x"].shape[1] == 5:
            pred = pred * self.extra
        losses = ((pred - batch["y"]) ** 2).mean(dim=(1, 2))
        return losses, losses.detach()


def torch_clipped_step(losses, params: list, optimizer: torch.optim.Optimizer, batch: dict, clip: float) -> None:
    """The reference: torch's backward of the mean of ``losses(batch)[0]``, clip_grad_norm_ and step."""
    optimizer.zero_grad(set_to_none=True)
    losses(batch)[0].mean().backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def skipping_batches(steps: int, dtype: torch.dtype = torch.float64, device: str = "cpu") -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(2, n, 3, generator=g, dtype=dtype).to(device),
             "y": torch.randn(2, n, 1, generator=g, dtype=dtype).to(device),
             "mask": torch.ones(2, n, dtype=torch.bool, device=device)}
            for n in [4, 4, 5, 4, 5, 5, 4, 5, 4, 4, 5, 5][:steps]]


@pytest.mark.parametrize("split", [False, True], ids=["one_part", "split"])
def test_fast_train_step_matches_torch_when_parameters_miss_gradients(split):
    """The step (eager here, the same update as its graphs) equals torch's clipping and AdamW in
    float64 under a changing schedule, also when a parameter misses gradients on some steps."""
    ours, ref = SkippingLoss(), SkippingLoss()
    groups = lambda m: [{"params": [m.weight, m.extra], "weight_decay": 0.1}, {"params": [m.bias], "weight_decay": 0.0}]
    opt, opt_ref = torch.optim.AdamW(groups(ours), lr=0.05), torch.optim.AdamW(groups(ref), lr=0.05)
    step = FastTrainStep(ours, opt, clip_val=0.5, capture=False, split=split)
    assert step.split is split and not step.capture
    for i, batch in enumerate(skipping_batches(12)):
        for o in (opt, opt_ref):
            o.param_groups[0].update(lr=0.05 / (1 + i), betas=(0.9 - 0.01 * i, 0.99))
        step(batch)
        torch_clipped_step(ref, list(ref.parameters()), opt_ref, batch, 0.5)
    assert float(opt.state[ours.extra]["step"]) == 6 and float(opt.state[ours.weight]["step"]) == 12
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_copies_of_a_module_leave_its_fast_step_behind():
    """EMA's averaged model is a deep copy of the module, made when a fit sets up: a fast step
    left from an earlier fit (its graphs, its optimizer) must not be copied with it."""
    import copy

    module = SurrogateModule(FLARE(3, 1, channels=8, num_blocks=1, num_heads=2, num_latents=4), 3, 1, fast_step=True)
    module._fast = FastTrainStep(module._sample_losses, torch.optim.AdamW(module.parameters()), capture=False)
    clone = copy.deepcopy(module)
    assert clone._fast is None and module._fast is not None
    torch.testing.assert_close(flat(clone.parameters()), flat(module.parameters()))


def test_fast_train_step_refuses_optimizers_it_does_not_reproduce():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="SGD"):
        FastTrainStep(lambda b: (p.sum()[None], p.sum()[None]), torch.optim.SGD([p], lr=0.1), capture=False)


# --- on a GPU: the captured graphs (scripts/gpu_tests.sh) ---------------------------------------
def gpu(test):
    """A test of the CUDA-graph path: marked ``gpu``, skipped without CUDA."""
    return pytest.mark.gpu(cuda(test))


def small_flare(backend: str = "explicit") -> torch.nn.Module:
    torch.manual_seed(0)
    return FLARE(in_dim=3, out_dim=1, channels=32, num_blocks=2, num_heads=4, num_latents=16,
                 mixer_backend=backend).cuda()


def losses_of(model: torch.nn.Module):
    """The per-sample (losses, errors) a FastTrainStep minimises: relative L2 of ``model``."""
    def losses(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        errors = relative_l2(model(batch["x"], batch["mask"]).float(), batch["y"], batch["mask"])
        return errors, errors
    return losses


def two_groups(model: torch.nn.Module, **kwargs) -> torch.optim.AdamW:
    ps = list(model.parameters())
    return torch.optim.AdamW([{"params": ps[::2]}, {"params": ps[1::2], "weight_decay": 0.0}], lr=3e-3,
                             weight_decay=0.05, **kwargs)


def one_cycle(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.OneCycleLR:
    """30 steps of OneCycle (lr and beta1 change every step) with lr >= 3e-4: updates stay far
    above the float32 rounding of the weights, so their relative differences mean something."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=30, pct_start=0.3,
                                               div_factor=2.0, final_div_factor=5.0)


def random_batch(n: int = 300) -> dict:
    return {"x": torch.randn(2, n, 3, device="cuda"), "y": torch.randn(2, n, 1, device="cuda"),
            "mask": torch.rand(2, n, device="cuda") > 0.2}


def teacher_force(ref: torch.optim.Optimizer, opt: torch.optim.Optimizer) -> None:
    """The reference optimizer takes ``opt``'s weights, state and schedule (parameters pair up in order;
    torch's eager AdamW keeps its step counts on the host)."""
    with torch.no_grad():
        for ref_group, group in zip(ref.param_groups, opt.param_groups):
            ref_group.update(lr=group["lr"], betas=group["betas"])
            for p, q in zip(ref_group["params"], group["params"]):
                p.copy_(q)
                state = opt.state[q]
                ref.state[p] = {"step": state["step"].to("cpu", copy=True), "exp_avg": state["exp_avg"].clone(),
                                "exp_avg_sq": state["exp_avg_sq"].clone()}


def ref_step(ref: torch.optim.Optimizer, params: list, grads: list, clip: float | None) -> None:
    """torch's clipping and step of ``ref`` with ``grads`` as the gradients of ``params``."""
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, clip)
    ref.step()


@gpu
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_cuda_graph_step_matches_eager_step(tiny_darcy_root, precision):
    """200 steps through Lightning: the graph's loss curve follows the eager step's, closely
    over the first epochs and, later, within the drift that rounding differences grow into.

    The graph runs the compiled training loss, whose kernels sum in other orders than eager
    ones in every operation, and such differences grow over training (H200: float32 within
    1e-3 for the first epochs and 1.2% at most over 200 steps, at a9a96c1 and feb5253; an
    eager run whose mixer alone runs through other kernels drifted 0.1%), so the later bound
    is 3x that reference drift or 2% (float32) / 20% (bf16), whichever is larger. Step-level
    exactness is checked without drift by the teacher-forced tests below.
    """
    _, _, eager = fit_tiny(tiny_darcy_root, fast=False, steps=200, accelerator="gpu", precision=precision)
    _, _, graph = fit_tiny(tiny_darcy_root, fast=True, steps=200, accelerator="gpu", precision=precision)
    _, _, other = fit_tiny(tiny_darcy_root, fast=False, steps=200, accelerator="gpu", precision=precision,
                           backend="chunked")
    assert graph.fast and graph.automatic and len(graph.params) == len(eager.params) == 50
    assert graph.graphs[-1] and all(graph.graphs[-1])  # the last epoch replayed captured graphs
    ref, losses, noise_run = (torch.tensor(t.losses) for t in (eager, graph, other))
    early, drift = (1e-3, 2e-2) if precision == "32-true" else (2e-2, 0.2)
    torch.testing.assert_close(losses[:5], ref[:5], rtol=early, atol=1e-5)
    gap = ((losses - ref).abs() / ref).max()
    noise = ((noise_run - ref).abs() / ref).max()
    assert gap <= max(3 * noise, drift), f"graph vs eager {gap:.3g}, drift of the reference pair {noise:.3g}"
    assert losses[-1] < 0.7 * losses[0]


@gpu
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_each_captured_step_equals_an_eager_step(precision):
    """Teacher-forced, so rounding cannot drift: before each of 30 steps the reference (the same
    compiled loss on a twin model, run without graphs, then backward, torch's clip_grad_norm_ and
    AdamW.step) takes the graph's weights and optimizer state; both then take one step on the same
    batch, with OneCycle's lr and beta1 changing every step and clipping active on most steps.
    Both run Inductor's kernels, so what differs is the capture, the captured update and the
    order of the mixer backward's atomic sums: float32 1e-3, bf16 0.05 (relative L2; a learning
    rate 10% off moves the update by 0.1). Against the uncompiled model the bf16 gradients differ
    by Inductor's fp32 intermediates: 0.143 on an H100 at 8d51942. The bf16 update itself is held
    to 5e-5 given the graph's own gradients (``test_bf16_captured_update_is_adams_on_its_gradients``)."""
    model, ref_model = small_flare("auto"), small_flare("auto")
    params = list(model.parameters())
    opt, ref_opt = two_groups(model), two_groups(ref_model)
    sched = one_cycle(opt)
    step = FastTrainStep(torch.compile(losses_of(model)), opt, clip_val=0.05)
    ref_losses = torch.compile(losses_of(ref_model))
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16-mixed")
    tol = 1e-3 if precision == "32-true" else 0.05
    worst, clipped = 0.0, 0
    for _ in range(30):
        batch = random_batch()
        before = flat(params)
        teacher_force(ref_opt, opt)
        with autocast:
            step(batch)
        ref_opt.zero_grad(set_to_none=True)
        with autocast:
            ref_losses(batch)[0].mean().backward()
        clipped += int(torch.nn.utils.clip_grad_norm_(list(ref_model.parameters()), 0.05) > 0.05)
        ref_opt.step()
        sched.step()
        worst = max(worst, rel(flat(params) - before, flat(ref_model.parameters()) - before))
    assert clipped >= 20  # clipping acted on most steps
    assert len(step._captured) == 1 and step._captured[next(iter(step._captured))].graphs  # replayed
    assert worst <= tol, f"captured vs eager update differ by {worst:.3g} (relative L2), tolerance {tol}"


@gpu
def test_bf16_captured_update_is_adams_on_its_gradients():
    """Under bf16 the graph's gradients differ from an eager step's by rounding; its update must
    not. Split, the step hands its gradients over: torch's clipping and AdamW, given them, the
    weights and the state, reproduce the update to 5e-5 (a learning rate or beta off by 1% moves
    it by ~1e-2; what remains is float32 lr and betas on the device: 1 - 0.999 is 1.3e-5 off in
    float32, as in torch's own capturable Adam). In one graph the gradients stay inside, so the
    check reads them back from Adam's first moment (m' = b1 m + (1 - b1) g): the step must then be
    AdamW's on that gradient (1e-4), and that gradient clipped to the threshold (a wrong b1 breaks
    the second moment)."""
    clip = 0.05
    for split in (True, False):
        model, ref_model = small_flare(), small_flare()
        params = list(model.parameters())
        opt, ref_opt = two_groups(model), two_groups(ref_model)
        sched = one_cycle(opt)
        step = FastTrainStep(torch.compile(losses_of(model)), opt, clip_val=clip, split=split)
        worst, at_threshold = 0.0, 0
        for _ in range(30):
            batch = random_batch()
            before = flat(params)
            teacher_force(ref_opt, opt)
            first_moments = [opt.state[p]["exp_avg"].clone() for p in params]
            with torch.autocast("cuda", torch.bfloat16):
                step.forward_backward(batch)
            step.backward()
            if split:
                grads = [None if p.grad is None else p.grad.clone() for p in params]
                step.update()
            else:  # recover the clipped gradient the graph used
                b1 = opt.param_groups[0]["betas"][0]
                grads = [(opt.state[p]["exp_avg"] - b1 * m) / (1 - b1) for p, m in zip(params, first_moments)]
                norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
                assert norm <= clip * (1 + 1e-3), f"the graph's gradient norm {norm} exceeds the clipping threshold"
                at_threshold += int(norm > clip * (1 - 1e-3))
            ref_step(ref_opt, list(ref_model.parameters()), grads, clip if split else None)
            sched.step()
            worst = max(worst, rel(flat(params) - before, flat(ref_model.parameters()) - before))
            sq, ref_sq = (flat(o.state[p]["exp_avg_sq"] for p in o.param_groups[0]["params"]) for o in (opt, ref_opt))
            worst = max(worst, rel(sq, ref_sq))
        tol = 5e-5 if split else 1e-4
        assert worst <= tol, f"split={split}: the update differs from AdamW's on its gradients by {worst:.3g}"
        assert split or at_threshold >= 20  # clipping acted on most steps
        assert all(len(e.graphs) == (2 if split else 1) for e in step._captured.values()) and step._captured


@gpu
def test_two_graph_step_averages_gradients_between_its_graphs():
    """The multi-process path on one GPU: forward+backward graph, the all-reduce (faked: the other
    rank's gradient is a fixed random vector), update graph. The gradients handed over must be the
    mean of both ranks', the local ones those of an eager backward (rounding: 1e-3), and the update
    AdamW's on the mean (1e-5)."""
    model, ref_model = small_flare(), small_flare()
    params = list(model.parameters())
    opt, ref_opt = two_groups(model), two_groups(ref_model)
    other = torch.randn(sum(p.numel() for p in params), device="cuda") * 1e-2
    local: list[torch.Tensor] = []

    def fake_all_reduce(buffer: torch.Tensor) -> None:
        local.append(buffer.clone())
        buffer.add_(other)

    step = FastTrainStep(torch.compile(losses_of(model)), opt, clip_val=0.05, world_size=2,
                         all_reduce=fake_all_reduce)
    assert step.split
    ref_params = [p for g in ref_opt.param_groups for p in g["params"]]  # the step's order: by group
    for _ in range(8):
        batch = random_batch()
        before = flat(params)
        teacher_force(ref_opt, opt)
        step.forward_backward(batch)
        step.backward()
        grads = [p.grad.clone() for p in step.params]
        torch.testing.assert_close(torch.cat([g.flatten() for g in grads]), (local[-1] + other) / 2, rtol=1e-6, atol=1e-9)
        ref_opt.zero_grad(set_to_none=True)
        losses_of(ref_model)(batch)[0].mean().backward()
        assert rel(local[-1], torch.cat([p.grad.flatten() for p in ref_params])) <= 1e-3
        step.update()
        ref_step(ref_opt, ref_params, grads, 0.05)
        assert rel(flat(params) - before, flat(ref_model.parameters()) - before) <= 1e-5
    assert len(local) == 8 and all(len(e.graphs) == 2 for e in step._captured.values()) and step._captured


@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_fast_step_on_two_gpus_matches_one(tiny_darcy_root, tmp_path):
    """DDP on 2 GPUs (NCCL all-reduce between the two graphs) with batch 2 each follows one GPU
    with batch 4 (float32; compiled kernels round differently at each batch size)."""
    def args(batch: int) -> list[str]:
        return ["fit", f"--config={CONFIGS / 'quickstart.yaml'}", *tiny_darcy_args(tiny_darcy_root, n_val=3, n_test=3),
                f"--data.init_args.batch_size={batch}", "--trainer.max_epochs=3", "--trainer.accelerator=gpu",
                "--trainer.precision=32-true", "--trainer.callbacks=[]", "--model.fast_step=true"]
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "flare_lightning", *args(2), *tiny_trainer_args(two, "ddp"),
                           "--trainer.strategy=ddp", "--trainer.devices=2"], cwd=tmp_path,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, f"DDP run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    one = tmp_path / "one"
    run_cli([*args(4), *tiny_trainer_args(one, "single"), "--trainer.devices=1"])
    weights = [torch.load(next(r.rglob("last.ckpt")), map_location="cpu", weights_only=True)["state_dict"]
               for r in (two, one)]
    names = [n for n, v in weights[1].items() if v.is_floating_point() and n.startswith("model.")]
    gap = rel(*(flat(w[n] for n in names) for w in weights))
    assert gap < 1e-3, f"two-GPU fast step ends {gap:.2e} (relative L2 of all weights) from one GPU"


@gpu
def test_shapes_beyond_the_graph_cap_run_eagerly_and_exactly(monkeypatch):
    """More batch shapes than ``MAX_GRAPHS`` (2 here): the first two are captured, the others run
    eagerly (with a warning), and every step equals torch's eager step teacher-forced."""
    import flare_lightning.training.fast_step as fast_step

    monkeypatch.setattr(fast_step, "MAX_GRAPHS", 2)
    model, ref_model = small_flare(), small_flare()
    params = list(model.parameters())
    opt, ref_opt = two_groups(model), two_groups(ref_model)
    step = FastTrainStep(losses_of(model), opt, clip_val=0.05, warmup_steps=1)
    with pytest.warns(UserWarning, match="2 batch shapes are captured already"):
        for n in [100, 120, 140, 160] * 3:
            batch = random_batch(n)
            before = flat(params)
            teacher_force(ref_opt, opt)
            step(batch)
            torch_clipped_step(losses_of(ref_model), list(ref_model.parameters()), ref_opt, batch, 0.05)
            assert rel(flat(params) - before, flat(ref_model.parameters()) - before) <= 1e-4, f"{n} points"
    assert len(step._captured) == 2 and all(e.graphs for e in step._captured.values())


@gpu
def test_captured_bias_correction_follows_each_parameters_step_count():
    """A parameter used only in batches of 5 points: its graphs capture the update with one
    bias correction per parameter once its step count falls behind, and training equals torch's
    AdamW with clipping (float32, no compiled kernels: same arithmetic)."""
    ours, ref = SkippingLoss(torch.float32, "cuda"), SkippingLoss(torch.float32, "cuda")
    opt, opt_ref = torch.optim.AdamW(ours.parameters(), lr=0.05), torch.optim.AdamW(ref.parameters(), lr=0.05)
    step = FastTrainStep(ours, opt, clip_val=0.5, warmup_steps=1)
    for batch in skipping_batches(12, torch.float32, "cuda") * 2:
        step(batch)
        torch_clipped_step(ref, list(ref.parameters()), opt_ref, batch, 0.5)
    assert float(opt.state[ours.extra]["step"]) == 12 and float(opt.state[ours.weight]["step"]) == 24
    assert any(not all(e.shared) for e in step._captured.values())  # a graph with per-parameter correction
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@gpu
def test_resume_on_a_gpu_from_an_eager_checkpoint(tiny_darcy_root, tmp_path):
    """A checkpoint written without the fast step keeps Adam's step counts on the host; resumed
    with it on a GPU, the counts move beside the weights so the graphs advance them (16 after 16
    steps), and the run ends where the eager step ends from the same checkpoint (a frozen bias
    correction would miss by several percent of the distance travelled)."""
    folder = tmp_path / "eager"
    fit_tiny(tiny_darcy_root, fast=False, steps=16, accelerator="gpu", default_root_dir=folder, stop_at=8)
    ckpt = next(folder.rglob("*.ckpt"))
    _, t_fast, fast = fit_tiny(tiny_darcy_root, fast=True, steps=16, accelerator="gpu", ckpt_path=str(ckpt))
    _, t_eager, eager = fit_tiny(tiny_darcy_root, fast=False, steps=16, accelerator="gpu", ckpt_path=str(ckpt))
    assert t_fast.global_step == t_eager.global_step == 16 and fast.fast
    steps = [s["step"] for s in t_fast.optimizers[0].state.values()]
    assert all(s.is_cuda and float(s) == 16 for s in steps)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    names = [n for n, _ in SurrogateModule(FLARE(3, 1, channels=16, num_blocks=2, num_heads=2, num_latents=8),
                                           3, 1).named_parameters()]
    start = flat(saved[n] for n in names)
    gap = rel(fast.params[-1] - start, eager.params[-1] - start)
    assert gap < 1e-2, f"resumed fast step ends {gap:.3g} of the distance travelled away from the eager one"


@gpu
def test_graphed_forward_replays_new_inputs():
    lin = torch.nn.Linear(4, 3).cuda()
    fwd = GraphedForward(lambda x, m: lin(x) * m[..., None])
    for _ in range(4):  # eager, capture, replay, replay
        x = torch.randn(2, 5, 4, device="cuda")
        m = torch.rand(2, 5, device="cuda") > 0.3
        torch.testing.assert_close(fwd(x, m), lin(x) * m[..., None])
    assert len(fwd._captured) == 1


@gpu
def test_graphed_forward_keeps_no_input_of_a_shape_seen_once():
    """Full-resolution test runs each have their own size: a shape seen once runs eagerly and its
    input is not kept (16 such 8.8M-point inputs would hold 1.7 GB)."""
    import weakref

    fwd = GraphedForward(lambda x, m: x * 2)
    x = torch.randn(1, 1000, 3, device="cuda")
    seen = weakref.ref(x)
    torch.testing.assert_close(fwd(x, None), x * 2)
    del x
    assert seen() is None and not fwd._captured


def test_graphed_forward_admits_a_shape_the_second_time_it_comes(monkeypatch):
    """Which shapes get a graph (the CPU side of the test below): a shape's first call runs eagerly,
    its second is admitted for capture, and past MAX_GRAPHS a repeated shape stays eager and warns."""
    import flare_lightning.training.fast_step as fast_step

    monkeypatch.setattr(fast_step, "MAX_GRAPHS", 1)
    fwd = GraphedForward(lambda x, m: x)
    assert [fwd._admit(k) for k in ("a", "b", "a")] == [False, False, True]
    assert list(fwd._captured) == ["a"] and fwd._seen_once == {"b"}
    with pytest.warns(UserWarning, match="1 batch shapes are captured already"):
        assert not fwd._admit("b")
    assert list(fwd._captured) == ["a"] and fwd._seen_once == {"b"}


@gpu
def test_graphed_forward_counts_only_captured_shapes(monkeypatch):
    """Shapes seen once (full-resolution test runs, each its own size) run eagerly without warning and
    do not use up MAX_GRAPHS: a shape that comes again is still captured; past MAX_GRAPHS captured
    shapes, a repeated shape warns and runs eagerly."""
    import warnings

    import flare_lightning.training.fast_step as fast_step

    monkeypatch.setattr(fast_step, "MAX_GRAPHS", 2)
    fwd = GraphedForward(lambda x, m: x * 2)

    def call(n):
        x = torch.randn(1, n, 3, device="cuda")
        torch.testing.assert_close(fwd(x, None), x * 2)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "captured already" warning for shapes seen once
        for n in range(100, 105):
            call(n)
        for n in (200, 200, 300, 300):  # two shapes that come again: both captured
            call(n)
    assert len(fwd._captured) == 2 and all(e.graphs for e, _ in fwd._captured.values())
    with pytest.warns(UserWarning, match="2 batch shapes are captured already"):
        call(100)  # seen before, but the graphs are used up: eager, with the advice
    call(300)  # a replay
    assert len(fwd._captured) == 2


@gpu
def test_graphed_forward_shapes_share_one_pool():
    """Three shapes captured and replayed in turn: each replay gives its own shape's eager
    result, and the graphs' memory is about one shape's, not three (one shared pool; the 1M
    config validates on runs of different sizes)."""
    torch.manual_seed(0)
    lin1, lin2 = torch.nn.Linear(4, 2048).cuda(), torch.nn.Linear(2048, 3).cuda()
    fwd = GraphedForward(lambda x, m: lin2(torch.relu(lin1(x))) * m[..., None])  # 128 MiB hidden per shape
    shapes = [(2, 8192), (2, 8000), (2, 7900)]

    def call(b, n, seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(b, n, 4, device="cuda", generator=g)
        m = torch.rand(b, n, device="cuda", generator=g) > 0.3
        out = fwd(x, m).clone()
        torch.testing.assert_close(out, lin2(torch.relu(lin1(x))) * m[..., None])

    torch.cuda.synchronize()
    for i, (b, n) in enumerate(shapes[:1] * 2):  # eager, then the first capture
        call(b, n, i)
    # Reserved memory with the allocator's free cache released (as each capture's start does): the
    # graphs' pool and live tensors, not the cached blocks of the eager references computed in `call`
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    start = torch.cuda.memory_reserved()
    for i, (b, n) in enumerate(shapes[1:] * 2):  # the other two shapes: eager, then capture
        call(b, n, 10 + i)
    for i, (b, n) in enumerate(shapes * 2):  # replays, interleaved
        call(b, n, 20 + i)
    assert len(fwd._captured) == 3
    hidden = 2 * 8192 * 2048 * 4
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    grown = torch.cuda.memory_reserved() - start
    assert grown < hidden, f"two more captures reserved {grown / 2**20:.0f} MiB; one shape's hidden is 128 MiB"


@gpu
def test_graphed_eval_in_fp32_under_bf16_training(tiny_darcy_root):
    """``eval_fp32`` with the fast step on a GPU: the captured evaluation forward runs in float32
    while training runs under bf16 autocast, and equals the eager float32 forward."""
    module, trainer, _ = fit_tiny(tiny_darcy_root, fast=True, steps=8, accelerator="gpu", precision="bf16-mixed")
    module.hparams.eval_fp32 = True
    module.cuda().eval()
    x = torch.randn(2, 169, 3, device="cuda")
    mask = torch.ones(2, 169, dtype=torch.bool, device="cuda")
    mask[1, 120:] = False
    with torch.no_grad():
        eager = module(x, mask)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            graphed = [module._predict({"x": x, "mask": mask}).clone() for _ in range(3)]  # eager, capture, replay
    assert module._fast_eval is not None
    for out in graphed:
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)


def test_bucket_sizes_bound_shapes_and_padding():
    from datamodules.collate import bucket_size

    sizes = [bucket_size(n) for n in range(1, 50_000)]
    assert all(s >= n for n, s in zip(range(1, 50_000), sizes))
    assert max(s / n for n, s in zip(range(17, 50_000), sizes[16:])) <= 1.25  # at most 25% padding
    assert len(set(sizes)) <= 4 * 12 + 1  # four buckets per doubling
    assert bucket_size(736) == 768 and bucket_size(47_500) == 49_152


def test_padded_batches_to_buckets_keep_every_sample(tiny_darcy_root):
    from datamodules.collate import PaddedCollate, bucket_size

    dm = DarcyDataModule(root=str(tiny_darcy_root), train_file="train.mat", test_file="test.mat", n_train=8,
                         n_val=4, n_test=4, stride=1, batch_size=2, generate=False, pad_to_buckets=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[1] == bucket_size(169) == 192
    plain = PaddedCollate()([dm.datasets["train"][i] for i in range(2)])
    assert batch["mask"].sum() == plain["mask"].sum() == 2 * 169


@pytest.mark.parametrize("loss", ["rel_l2", "darcy_grad"])
def test_training_loss_traces_as_one_graph(loss):
    """fast_step compiles the whole training loss (normalisers, model, loss): it must trace
    without a graph break (else Inductor fuses less and the step launches more kernels)."""
    torch.manual_seed(0)
    model = FLARE(in_dim=3, out_dim=1, channels=16, num_blocks=2, num_heads=2, num_latents=8)
    module = SurrogateModule(model, in_dim=3, out_dim=1, loss=loss)
    batch = {"x": torch.randn(2, 36, 3), "y": torch.randn(2, 36, 1), "mask": torch.rand(2, 36) > 0.2}
    traced = torch.compile(module._sample_losses, backend="eager", fullgraph=True)
    torch.testing.assert_close(traced(batch), module._sample_losses(batch))


@gpu
def test_benchmark_profile_of_the_captured_step(tiny_darcy_root):
    """train_step_small.py --profile: the kernel table of the captured step at the end of a fit, from a
    loader batch as Lightning sees it (it carries a ``padded`` flag beside the tensors)."""
    from tests.helpers import import_benchmark

    profile = import_benchmark("train_step_small").FastStepProfile()
    fit_tiny(tiny_darcy_root, fast=True, steps=8, accelerator="gpu", callbacks=(profile,))
    summary, kernels = profile.found
    assert summary["kernels_per_step"] > 10 and summary["kernel_ms_per_step"] > 0 and kernels
    assert all(k["calls_per_step"] > 0 and k["us_per_call"] > 0 for k in kernels)


@gpu
def test_benchmark_loop_profile_of_a_plain_fit(tiny_darcy_root):
    """train_step_small.py --profile on a row that does not capture its step: the warm-up epoch's
    GPU busy time and the host waits of a real Lightning fit on a GPU (epochs of 4 batches here)."""
    from benchmarks.loop_profile import LoopProfile

    loop = LoopProfile(first=1, steps=3)
    fit_tiny(tiny_darcy_root, fast=False, steps=8, accelerator="gpu", callbacks=(loop,))
    found = loop.found
    assert found["kernels_per_step"] > 10 and 0 < found["kernel_ms_per_step"] < found["loop_ms_per_step"]
    assert found["host_waits_per_step"] >= sum(found["host_waits"].values()) and len(found["host_waits"]) <= 8
    assert all(" at " in where for where in found["host_waits"])  # each wait named by its op and caller
