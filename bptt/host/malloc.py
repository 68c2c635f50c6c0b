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

__all__ = ["keep_large_blocks", "tune_malloc"]

# glibc's <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 256 << 20
KEEP_TRIM_THRESHOLD = 1 << 30  # keep_large_blocks: a few steps' blocks of temporaries


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


@functools.cache
def keep_large_blocks() -> bool:
    """:func:`tune_malloc`, and blocks of any size from one heap: True if it all took effect.

    glibc caps the mmap threshold at 32 MiB, so a block above it is mapped at each
    allocation and its pages faulted in afresh, one fault per 4 KiB; and a block that
    does not fit a thread's arena gets a heap of its own, unmapped when freed. XLA on
    the CPU allocates a jitted step's temporaries as one block per call: 34-41 MB at S2
    (``jax.jit(...).lower(...).compile().memory_analysis()``), 8,800-10,400 faults per
    step: the scanned step's CPU time 75.5 ms against 62 kept (benchmarks/NOTES.md,
    round 7, continued).
    Here ``mallopt`` turns mapping off (``M_MMAP_MAX`` 0) and keeps one arena
    (``M_ARENA_MAX`` 1, for the threads that have none yet: call it before JAX starts),
    so freed blocks stay in the heap for the next step (above 1 GiB free at its top it
    is still trimmed: room for the blocks of a few programs, 225 MB each at S3). The
    cost is memory the process keeps: what a step freed, and what fragments.
    ``bptt train --tune-malloc`` calls it on JAX.
    """
    if not tune_malloc():
        return False
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    kept = [mallopt(_M_MMAP_MAX, 0), mallopt(_M_ARENA_MAX, 1),
            mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)]  # fmt: skip
    return all(kept)
