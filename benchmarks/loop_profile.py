"""Where a Lightning training loop's time goes besides its kernels: a few steps under torch.profiler.

``LoopProfile`` profiles steps of a fit's warm-up epoch (epoch 0, after compilation; the timed
epoch is left alone) and reports per step: the wall time, the GPU's busy time (the union of its
kernels' intervals, so overlapping kernels count once), the idle time between them, and the host
calls that wait for the GPU (stream, device and event synchronisations, e.g. inside ``.item()`` on
a device tensor), each with the ATen op and the Python frame that made it. A step whose wall time
exceeds its busy time by a host-side wait is serialised with the host; one without waits is bound
by the GPU or by a host that cannot keep up. The profiler slows the host (Python stacks are
recorded), so the idle time is an upper bound; the waits and their callers are exact.
``benchmarks/train_step_small.py --profile`` adds it to every row (a captured row's from its sixth
step: replays only; its kernels come from ``profile_fast_step``).
"""

from __future__ import annotations

import re
import time
from collections import Counter

import lightning as L
import torch

PY_FRAME = re.compile(r"^\S.*\.py\(\d+\): \S+$")  # a Python frame's event, e.g. "flare_lightning/x.py(12): f"
# CUDA runtime calls that block the host until the GPU has caught up (``.item()`` on a device tensor
# makes one; on a CPU tensor, such as the optimizer's step counts, it waits for nothing)
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: the time at least one kernel ran."""
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def _caller(event) -> str:
    """``op at frame``: the outermost ATen op above ``event`` (e.g. ``aten::item``) and the innermost
    Python frame (``file(line): function``, as the profiler names its Python events) that lies in this
    project, else the innermost Python frame at all."""
    op, frames = event.name, []
    while (event := event.cpu_parent) is not None:
        if PY_FRAME.match(event.name):
            frames.append(event.name)
        elif event.name.startswith("aten::") and not frames:
            op = event.name
    ours = [f for f in frames if any(part in f for part in ("flare_lightning", "datamodules", "benchmarks", "tests"))]
    return f"{op} at {(ours or frames or ['(no Python caller)'])[0]}"


def summarise(events, steps: int, wall_us: float) -> dict:
    """Per-step figures of a profile's ``events`` (``prof.events()``) over ``steps`` steps of ``wall_us``."""
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = busy_time([(e.time_range.start, e.time_range.end) for e in kernels])
    waits = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.name in WAITS]
    where = Counter(_caller(e) for e in waits)
    return {
        "loop_ms_per_step": wall_us / steps / 1e3,
        "kernels_per_step": len(kernels) / steps,
        "kernel_ms_per_step": busy / steps / 1e3,
        "gpu_idle_ms_per_step": max(0.0, wall_us - busy) / steps / 1e3,
        "host_waits_per_step": len(waits) / steps,
        "host_wait_ms_per_step": sum(e.time_range.end - e.time_range.start for e in waits) / steps / 1e3,
        "host_waits": {k: v / steps for k, v in where.most_common(8)},
    }


class LoopProfile(L.Callback):
    """Profiles ``steps`` training steps of epoch 0 from batch ``first`` on (compiled by then) and keeps
    ``summarise``'s figures in ``found`` (empty when the epoch was shorter)."""

    def __init__(self, first: int = 3, steps: int = 4) -> None:
        self.first, self.steps = first, steps
        self.found: dict = {}
        self._prof = None
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == 0 and batch_idx == self.first:
            from torch.profiler import ProfilerActivity, profile

            _sync()
            self._prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True)
            self._prof.start()
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._prof is not None and batch_idx == self.first + self.steps - 1:
            _sync()
            wall_us = (time.perf_counter() - self._t0) * 1e6
            self._prof.stop()
            self.found = summarise(self._prof.events(), self.steps, wall_us)
            self._prof = None
            print(f"loop profile: {self.found['loop_ms_per_step']:.1f} ms per step, GPU busy "
                  f"{self.found['kernel_ms_per_step']:.1f} ms, idle {self.found['gpu_idle_ms_per_step']:.1f} ms; "
                  f"{self.found['host_waits_per_step']:.1f} host waits per step", flush=True)
            for where, count in self.found["host_waits"].items():
                print(f"  {count:.1f} per step: {where}", flush=True)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
