"""Parts of FLARE that keep float32 under bf16/fp16 autocast (``FLARE(fp32_parts=...)``).

Mixed precision rounds every GEMM input and the residual stream to 8 mantissa bits; at
errors of ~1e-2 that costs accuracy. Naming the parts that keep float32 is the dial between
the two (and the arms of the ablation of where bf16 loses it, benchmarks/ACCURACY.md).
Each part returns in the dtype the stream would have without it, so parts compose
independently; with every part named, autocast changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

FP32_PARTS = {
    "residual": "the residual stream between blocks (the lifting's output on): adds and LayerNorm inputs",
    "lift": "the input lifting MLP",
    "kv": "the key and value MLPs (and the LayerNorm before them)",
    "mixer": "the latent mixing (logits, softmax statistics, products with values) and its output projection",
    "ffn": "each block's feed-forward MLP (and the LayerNorm before it)",
    "head": "the output norm and head MLP",
}


def check_fp32_parts(owner: str, parts: Iterable[str] | None) -> frozenset[str]:
    """The named parts as a set; an unknown name fails naming ``fp32_parts`` and the choices."""
    if parts is None:
        return frozenset()
    if isinstance(parts, str):
        parts = [parts]
    chosen = frozenset(parts)
    unknown = sorted(chosen - FP32_PARTS.keys())
    if unknown:
        raise ValueError(f"{owner}: fp32_parts has unknown part(s) {unknown}; choose from {sorted(FP32_PARTS)}")
    return chosen


def low_precision(x: Tensor) -> torch.dtype | None:
    """The autocast dtype on x's device, or None when autocast is off there."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def keeps_fp32(x: Tensor, part_named: bool) -> bool:
    """Whether a part runs in float32 here: it is named and autocast is on for x's device
    (decide before entering ``full_precision``, which turns autocast off)."""
    return part_named and low_precision(x) is not None


@contextlib.contextmanager
def full_precision(x: Tensor, on: bool) -> Iterator[None]:
    """Autocast off on x's device inside when ``on`` (from ``keeps_fp32``)."""
    if on:
        with torch.autocast(x.device.type, enabled=False):
            yield
    else:
        yield


def as_float(x: Tensor, on: bool) -> Tensor:
    """x in float32 when ``on`` and x is half precision (float32 and float64 stay)."""
    return x.float() if on and x.dtype in (torch.float16, torch.bfloat16) else x
