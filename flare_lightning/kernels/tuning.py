"""Mixer tile sizes picked by timing, for the small problems the default tiles were not swept on.

``default_config`` comes from sweeps at N = 2^20 (benchmarks/mixer_tune.py). At the paper's
own meshes (Darcy 7,225 points, elasticity 972) each mixer kernel runs for tens of
microseconds and other tiles and program counts win. With tuning on, for problems of at most
``SMALL_LOGITS`` logits (B·H·N·M), the first eager call of each problem shape times a few
candidates per kernel on that call's own inputs (one kernel at a time, the others fixed),
drops any whose output differs from the default's by more than rounding, and keeps the
fastest for the rest of the process. Larger problems keep the swept defaults.

Opt-in (``FLARE_MIXER_AUTOTUNE=1``): measured through ``flare fit`` on an H200 at commit
5bf5c3b it did not pay at the paper's sizes (Darcy 6.65 vs 6.44 ms per fast step, elasticity
3.65 vs 3.05; benchmarks/RESULTS.md): the picks, timed kernel by kernel in isolation, do not
carry over to the captured step. The choice changes only the order of the kernels' sums, but
two processes may pick different tiles (not bitwise reproducible). Tuning never runs during
CUDA graph capture (a shape first seen there runs the default).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SMALL_LOGITS = 2**28  # B·H·N·M at or below which tiles are tuned (Darcy: 5.9e7; N = 2^20, H8, M64: 5.4e8)
MAX_TILE = 64 * 128  # block_n x block_m of a candidate: larger tiles spill registers at D >= 16
_TOLERANCE = 2e-2  # relative L2 distance from the default's outputs (bf16 noise is ~3e-3)

_cache: dict[tuple, object] = {}


def autotune_enabled() -> bool:
    """Whether tuning is on (``FLARE_MIXER_AUTOTUNE=1``; off by default)."""
    return os.environ.get("FLARE_MIXER_AUTOTUNE", "0") == "1"


def problem_key(pass_name: str, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple:
    """What a tuned config is valid for: pass, device, shapes, strides, dtype, mask presence."""
    return (pass_name, str(k.device), tuple(q.shape), tuple(k.shape), k.stride(), v.stride(), k.dtype, mask is not None)


def wants_tuning(k: Tensor, num_latents: int) -> bool:
    """Tune this call: CUDA, bf16/fp16, small problem, tuning on, not capturing a graph."""
    b, h, n, _ = k.shape
    return (
        k.is_cuda
        and k.dtype in (torch.bfloat16, torch.float16)
        and b * h * n * num_latents <= SMALL_LOGITS
        and autotune_enabled()
        and not torch.cuda.is_current_stream_capturing()
    )


def candidates(kernel, num_latents: int) -> list:
    """Variants of one kernel's ``KernelConfig``: point tiles 32/64/128, latent tiles up to
    128 (within M), 2 to 16 programs per SM, the base's warps and stages, no register cap."""
    from flare_lightning.kernels.triton_mixer import _pow2

    bm_max = _pow2(num_latents)
    out = [kernel]
    for block_n in (32, 64, 128):
        for block_m in sorted({min(bm_max, 64), min(bm_max, 128)}):
            if block_n * block_m > MAX_TILE:
                continue
            for per_sm in (2, 4, 8, 16):
                cand = dataclasses.replace(kernel, block_n=block_n, block_m=block_m, programs_per_sm=per_sm, maxnreg=None)
                if cand not in out:
                    out.append(cand)
    return out


def cuda_timer(run: Callable[[], object], reps: int = 10) -> float:
    """Milliseconds per call of ``run`` on the current stream (two warm-up calls first)."""
    for _ in range(2):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def _rel_l2(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        x, y = x.float(), y.float()
        worst = max(worst, float((x - y).norm() / y.norm().clamp_min(1e-30)))
    return worst


def tune(
    base,
    roles: Sequence[str],
    run: Callable[[object], Sequence[Tensor]],
    num_latents: int,
    timer: Callable[[Callable[[], object]], float] = cuda_timer,
):
    """The fastest ``MixerConfig`` found by varying ``roles`` one at a time from ``base``.

    ``run(cfg)`` computes the pass with ``cfg`` and returns its outputs; a candidate that
    fails (out of resources) or whose outputs differ from the base's by more than
    ``_TOLERANCE`` is skipped.
    """
    reference = [t.detach().clone() for t in run(base)]
    best, best_ms = base, timer(lambda: run(base))
    for role in roles:
        for kernel in candidates(getattr(base, role), num_latents)[1:]:
            cfg = dataclasses.replace(best, **{role: kernel})
            try:
                if _rel_l2(run(cfg), reference) > _TOLERANCE:
                    log.warning("mixer autotune: %s %s disagrees with the default; skipped", role, kernel)
                    continue
                ms = timer(lambda: run(cfg))
            except Exception as e:  # noqa: BLE001  (Triton raises several kinds for out-of-resources tiles)
                log.debug("mixer autotune: %s %s failed: %s", role, kernel, e)
                continue
            if ms < best_ms:
                best, best_ms = cfg, ms
    return best


def tuned_config(key: tuple, base, roles: Sequence[str], run: Callable[[object], Sequence[Tensor]], k: Tensor, num_latents: int):
    """The config for ``key``: cached, freshly tuned (when ``wants_tuning``), else ``base``."""
    if key in _cache:
        return _cache[key]
    if not wants_tuning(k, num_latents):
        return base
    with torch.no_grad():
        cfg = tune(base, roles, run, num_latents)
    _cache[key] = cfg
    log.info("mixer autotune %s: %s", key, {r: getattr(cfg, r) for r in roles})
    return cfg


def tuned_configs() -> dict[tuple, object]:
    """The configs tuned so far in this process (for benchmarks and logs)."""
    return dict(_cache)


def clear_cache() -> None:
    """Forget tuned configs (tests; a new GPU)."""
    _cache.clear()


__all__ = [
    "SMALL_LOGITS",
    "autotune_enabled",
    "candidates",
    "clear_cache",
    "cuda_timer",
    "problem_key",
    "tune",
    "tuned_config",
    "tuned_configs",
    "wants_tuning",
]
