"""Which NumPy schedule ``auto`` picks, from measured break-even points.

The figures behind each constant are in benchmarks/NOTES.md (2-core AMD EPYC,
OpenBLAS 0.3.31). ``work`` is the multiply-adds of one recurrence product,
B * D * D: what a time step costs, and what a thread hand-over must be worth.
"""

from __future__ import annotations

from .threads import blas_controller, max_threads

__all__ = ["batch_parts", "choose", "time_blocks"]

# Below this work OpenBLAS runs a recurrence product faster on one thread than on
# two (S1, B=32 D=100: twice as fast on one): the single schedule limits BLAS.
MIN_BLAS_WORK = 1 << 20

# The overlapped schedule won in this range of work (time over the one-block step,
# float32 / float64: D=128 B=64 0.71 / -, S2 0.72 / 0.74, S3 0.78-0.93 / 0.86;
# S1 lost, 1.03-1.61); it cuts T into this many blocks of at least 2 steps.
OVERLAP_WORK = (1 << 20, 1 << 26)
OVERLAP_BLOCKS = 10
MIN_BLOCK_STEPS = 2

# The batch split beat the overlap from this work (a float64 product counting 4),
# with parts of at least this many rows (split over overlap, float32: 64x512 0.91,
# S3 0.88, 128x1024 0.81, but 128x256 1.13 and S2 1.05; float64: S2 0.92, S3 0.86).
SPLIT_WORK = 1 << 24
SPLIT_FLOAT64_COST = 4
MIN_PART_ROWS = 32


def threads_usable() -> bool:
    """Whether ``auto`` may use threads: 2+ threads allowed and threadpoolctl installed."""
    return max_threads() > 1 and blas_controller() is not None


def choose(T: int, B: int, D: int, itemsize: int, *, single: bool = True) -> str:
    """``"split"``, ``"overlap"`` or ``"single"`` for a NumPy step of this size.

    ``single``: one vanilla layer of one direction, the only model the overlap runs.
    Another (a stack, a gated cell) gets the batch split where the overlap would have
    run, if the batch makes two parts: split over single, float32, T = 100, B = 64,
    D = 128: LSTM 0.85, GRU 0.87, two tanh layers 0.93; D = 256: two LSTM layers 0.90,
    two tanh layers 1.02 (benchmarks/NOTES.md, round 7h).
    """
    work = B * D * D
    cost = SPLIT_FLOAT64_COST if itemsize >= 8 else 1
    parts = min(max_threads(), B // MIN_PART_ROWS) > 1
    if work * cost >= SPLIT_WORK and parts and threads_usable():  # the cheap tests first
        return "split"
    if OVERLAP_WORK[0] <= work < OVERLAP_WORK[1] and T >= 2 * MIN_BLOCK_STEPS:
        if threads_usable():
            return "overlap" if single else ("split" if parts else "single")
    return "single"


def time_blocks(T: int, *, forced: bool) -> list[range]:
    """Consecutive blocks of steps covering 0..T-1 for the overlapped schedule.

    ``auto`` makes blocks of at least :data:`MIN_BLOCK_STEPS`; a forced overlap up
    to :data:`OVERLAP_BLOCKS` blocks of any length.
    """
    n = min(T, OVERLAP_BLOCKS) if forced else min(T // MIN_BLOCK_STEPS, OVERLAP_BLOCKS)
    edges = [T * i // n for i in range(n + 1)] if n > 1 else [0, T]
    return [range(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def batch_parts(B: int, *, forced: bool) -> list[slice]:
    """Consecutive parts of the batch for the batch split: one per thread.

    ``auto`` makes parts of at least :data:`MIN_PART_ROWS` rows; a forced split at
    least two parts (at most B), even with one thread (they then run one by one).
    """
    n = min(max(2, max_threads()), B) if forced else min(max_threads(), B // MIN_PART_ROWS)
    edges = [B * i // n for i in range(n + 1)] if n > 1 else [0, B]
    return [slice(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
