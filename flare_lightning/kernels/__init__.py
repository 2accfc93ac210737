"""FLARE mixer implementations and the dispatch between them.

The Triton kernels live in ``triton_mixer`` and are imported on demand, so this package
imports without Triton installed.
"""

from flare_lightning.kernels.chunked import flare_mix_chunked
from flare_lightning.kernels.dispatch import BACKENDS, MixerBackend, flare_mix, resolve_backend, triton_available
from flare_lightning.kernels.reference import flare_mix_explicit, flare_mix_sdpa, flare_weights

__all__ = [
    "BACKENDS",
    "MixerBackend",
    "flare_mix",
    "flare_mix_chunked",
    "flare_mix_explicit",
    "flare_mix_sdpa",
    "flare_weights",
    "resolve_backend",
    "triton_available",
]
