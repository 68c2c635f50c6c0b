"""Keep the memory a NumPy step frees, for the next step to reuse (glibc only).

An array-API step cannot write into buffers it keeps (the standard has no
``out=``), so every step allocates its (T, B, D)-sized arrays afresh and frees
them at the end. With glibc's default settings, blocks of 128 KiB and more are
mapped and unmapped at each step, and the top of the heap is handed back to the
kernel once more than about twice the largest freed block lies free there; the
next step touches those pages again, one minor page fault per 4 KiB. At
S1 (benchmarks/NOTES.md) that was 150-370 faults and up to a third of a step.

:func:`tune_malloc` raises both thresholds with ``mallopt``, once per process:
blocks below 32 MiB come from the heap and freed memory stays mapped up to
256 MiB. The cost is resident memory the process keeps after a step, at most
that much. ``bptt train`` and ``bptt bench`` call it at start; a program
calling :func:`bptt.loss_and_grad` in its own loop may call it once. On a C
library without ``mallopt`` (macOS, musl) it changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["tune_malloc"]

# glibc's <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 256 << 20


@functools.cache
def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; True if both took effect."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
