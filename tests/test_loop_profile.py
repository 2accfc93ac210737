"""benchmarks/loop_profile.py: the GPU's busy time as a union of kernel intervals, the host waits
named by op and caller, and a real Lightning loop profiled (on the CPU a read of a tensor into Python
waits for nothing; on a GPU the same read is a wait: the GPU test in tests/training/test_fast_step.py)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from benchmarks.loop_profile import LoopProfile, busy_time


def test_busy_time_counts_overlaps_once():
    assert busy_time([]) == 0.0
    assert busy_time([(0, 10), (5, 15), (20, 25), (21, 22)]) == pytest.approx(20.0)
    assert busy_time([(30, 40), (0, 5), (4, 6)]) == pytest.approx(16.0)


class ReadsLoss(BoringModel):
    """Reads its loss into Python every step."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.seen = out["loss"].item()
        return out


def test_loop_profile_of_a_cpu_fit_counts_no_waits():
    """On the CPU the loss read (and the optimizer's step counts) wait for nothing: no false waits."""
    torch.manual_seed(0)
    loop = LoopProfile(first=2, steps=3)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=0, callbacks=[loop], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    trainer.fit(ReadsLoss())
    found = loop.found
    assert found["host_waits_per_step"] == 0 and found["host_waits"] == {}
    assert found["loop_ms_per_step"] > 0 and found["kernels_per_step"] == 0  # no GPU here
    assert found["gpu_idle_ms_per_step"] == pytest.approx(found["loop_ms_per_step"])


def test_waits_are_named_by_op_and_caller_and_kernels_count_as_busy_time():
    """On a GPU ``.item()`` is ATen's scalar read with a stream synchronisation inside: one wait,
    named by the op called from Python and the project's frame that called it."""
    from types import SimpleNamespace as E

    from benchmarks.loop_profile import summarise

    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    outer = E(name="lightning/pytorch/loops/x.py(10): run", cpu_parent=None, device_type=cpu, time_range=E(start=0, end=200))
    frame = E(name="flare_lightning/training/module.py(242): _sample_losses", cpu_parent=outer, device_type=cpu,
              time_range=E(start=0, end=100))
    item = E(name="aten::item", cpu_parent=frame, device_type=cpu, time_range=E(start=10, end=41))
    read = E(name="aten::_local_scalar_dense", cpu_parent=item, device_type=cpu, time_range=E(start=10, end=40))
    sync = E(name="cudaStreamSynchronize", cpu_parent=read, device_type=cpu, time_range=E(start=12, end=27))
    kernels = [E(name=f"k{i}", cpu_parent=None, device_type=cuda, time_range=E(start=a, end=b))
               for i, (a, b) in enumerate(((0, 3000), (1000, 4000), (5000, 6000)))]
    found = summarise([outer, frame, item, read, sync, *kernels], steps=2, wall_us=10_000)
    assert found["host_waits_per_step"] == 0.5 and found["host_wait_ms_per_step"] == pytest.approx(0.0075)
    assert found["host_waits"] == {"aten::item at flare_lightning/training/module.py(242): _sample_losses": 0.5}
    assert found["kernel_ms_per_step"] == pytest.approx(2.5) and found["gpu_idle_ms_per_step"] == pytest.approx(2.5)
    assert found["kernels_per_step"] == 1.5 and found["loop_ms_per_step"] == pytest.approx(5.0)
