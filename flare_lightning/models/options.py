"""Construction-time checks of model options: a degenerate size fails with the option's
name and what was expected, instead of a ZeroDivisionError or a silent no-op later."""

from __future__ import annotations

import math


def check_ints(owner: str, minimum: int, **values: object) -> None:
    """Each value must be an int >= ``minimum`` (bools are not sizes)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")


def check_optional_positive(owner: str, **values: object) -> None:
    """Each value must be None or a positive int."""
    for name, value in values.items():
        if value is not None:
            check_ints(owner, 1, **{name: value})


def check_heads(owner: str, channels: int, num_heads: int) -> None:
    """``channels`` must split evenly into ``num_heads`` heads."""
    if channels % num_heads != 0:
        raise ValueError(
            f"{owner}: channels ({channels}) must be divisible by num_heads ({num_heads}); "
            f"e.g. num_heads in {[h for h in range(1, min(channels, 64) + 1) if channels % h == 0]}"
        )


def check_finite(owner: str, positive: bool = False, **values: object) -> None:
    """Each value must be a finite real number (> 0 when ``positive``)."""
    for name, value in values.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (positive and value <= 0):
            raise ValueError(f"{owner}: {name} must be a finite{' positive' if positive else ''} number, got {value!r}")
