"""Freed batch buffers go back to the operating system in data-loading processes.

glibc serves a large allocation with its own memory map, but after the first such buffer is freed
it raises its mmap threshold to that size, so the next buffers of a point-sampling loader (tens of
MB per 2M-point run) come from the heap, which fragments and is not returned: a loader worker grew
by about 0.1 GB per epoch of 21 runs, without end (benchmarks/RESULTS.md, "Host memory of
DrivAerML training at scale"). A fixed threshold keeps every large buffer a map of its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
THRESHOLD = 128 * 1024  # glibc's initial value: allocations of 128 KiB and more are mapped


def fixed_mmap_threshold(nbytes: int = THRESHOLD) -> bool:
    """Fix this process's glibc mmap threshold at ``nbytes`` (which also stops its dynamic rise);
    False where the C library has no ``mallopt`` (not glibc: nothing to do)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, nbytes) == 1
