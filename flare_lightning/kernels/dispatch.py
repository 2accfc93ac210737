"""One entry point for the FLARE mixer, choosing an implementation by name.

| backend    | what runs                                              | where            |
|------------|--------------------------------------------------------|------------------|
| ``triton`` | fused Triton kernels, nothing of size N x M stored     | CUDA             |
| ``chunked``| two SDPA calls, decode folded over point chunks        | anywhere         |
| ``sdpa``   | the paper's two SDPA calls                             | anywhere         |
| ``explicit``| materialised weights (ground truth, analysis)         | anywhere, small N|

``auto`` takes ``triton`` for CUDA tensors when Triton imports, else ``chunked``.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import Tensor

from flare_lightning.kernels.chunked import flare_mix_chunked
from flare_lightning.kernels.reference import check_mixer_inputs, flare_mix_explicit, flare_mix_sdpa

MixerBackend = Literal["auto", "triton", "chunked", "sdpa", "explicit"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "chunked", "sdpa", "explicit")


_TRITON: bool | None = None  # triton_available's answer, once asked


def triton_available() -> bool:
    """Whether the Triton kernels can be imported (Triton is an optional dependency). Cached in a
    module global, not ``lru_cache``: torch.compile traces it as a constant instead of warning that
    it ignores the cache wrapper (a warning in every compiled GPU fit's log)."""
    global _TRITON
    if _TRITON is None:
        try:
            import flare_lightning.kernels.triton_mixer  # noqa: F401
        except ImportError:
            _TRITON = False
        else:
            _TRITON = True
    return _TRITON


def resolve_backend(backend: str, k: Tensor) -> str:
    """The concrete backend that ``backend`` means for keys ``k`` (``auto`` picks the fastest)."""
    if backend not in BACKENDS:
        raise ValueError(f"mixer_backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if k.is_cuda and triton_available() else "chunked"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("mixer_backend='triton' needs the triton package; install it or use 'chunked'")
        if not k.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"mixer_backend='triton' needs CUDA tensors, got {k.device}; use 'auto' or 'chunked' "
                "(or set TRITON_INTERPRET=1 before import to debug the kernels on CPU)"
            )
    return backend


def mixer_dtype(k: Tensor) -> torch.dtype:
    """The dtype the mixer computes in: autocast's when it is on for k's device, as for SDPA.

    Under autocast the residual stream and LayerNorm outputs stay float32, so k and v
    arrive in float32; without this cast the mixer would run at full precision.
    """
    device = k.device.type
    if k.is_floating_point() and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return k.dtype


def flare_mix(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    scale: float = 1.0,
    backend: str = "auto",
) -> Tensor:
    """FLARE token mixing ``softmax_M(s k qᵀ) softmax_N(s q kᵀ) v``.

    Args:
        q: latent queries [H, M, D]; cast to the compute dtype (a float32 parameter
            still receives its gradient through the cast).
        k: keys [B, H, N, D].
        v: values [B, H, N, D].
        mask: [B, N] bool, True on real points, or None.
        scale: logit scale s.
        backend: ``auto`` or a name from ``BACKENDS``.

    Returns:
        y [B, H, N, D] in the compute dtype: autocast's if enabled (see ``mixer_dtype``),
        else k's.
    """
    check_mixer_inputs(q, k, v, mask)
    name = resolve_backend(backend, k)
    dtype = mixer_dtype(k)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if name == "triton":
        from flare_lightning.kernels.triton_mixer import flare_mix_triton

        return flare_mix_triton(q, k, v, mask, scale)
    if name == "chunked":
        return flare_mix_chunked(q, k, v, mask, scale)
    if name == "explicit":
        return flare_mix_explicit(q, k, v, mask, scale)
    return flare_mix_sdpa(q, k, v, mask, scale)
