"""NCCL settings for context parallelism: small buffers for small collectives.

A context group's collectives are tiny and latency-bound (per block a [B, H, M] max and a
[B, H, M, D+1] sum: under 0.5 MB per step for the 8-block C=64 model), but NCCL sizes its
buffers for bandwidth: 4 MiB per channel, protocol and peer, over up to 32 channels on NVLink,
which on two H200s left ~0.9 GB less free memory per GPU once the communicator was up
(benchmarks/RESULTS.md). Memory is what limits the largest sample, so context-parallel runs
ask NCCL for 1 MiB buffers on at most 4 channels unless the user set either variable.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SMALL_COLLECTIVES: dict[str, str] = {"NCCL_BUFFSIZE": str(1 << 20), "NCCL_MAX_NCHANNELS": "4"}


def use_small_nccl_buffers(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set ``SMALL_COLLECTIVES`` in ``env`` where unset (before NCCL starts); returns what it set."""
    applied = {key: value for key, value in SMALL_COLLECTIVES.items() if key not in env}
    env.update(applied)
    return applied


__all__ = ["SMALL_COLLECTIVES", "use_small_nccl_buffers"]
