"""The timing harness of ``bench_step.py``: interleaved blocks, warm-up, the busy-machine guard.

Contenders run interleaved in one process, A B A B ...: before each block a pause
and one untimed call (BLAS thread pools spin after a call and slow the next
library down), then ``n`` timed calls, the device synchronised before each clock
read. ``n`` is chosen per contender from one call timed after two warm-up calls,
so that first-call work (JAX tracing and compilation, CuPy kernel compilation,
lazy allocations) does not size the blocks. Nothing here knows a library: a
contender is a :class:`Case` of plain callables.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["WARMUP_CALLS", "Case", "stats", "time_blocks", "time_one_call", "traced_peak"]

WARMUP_CALLS = 2  # untimed calls of each contender before one call sizes its blocks


@dataclass
class Case:
    """One contender at one size: ``step()`` runs once; ``sync()`` waits for the device."""

    name: str
    step: Callable[[], Any]
    sync: Callable[[], None] = lambda: None
    peak_bytes: Callable[[], int | None] = lambda: None
    update: Callable[[], Any] | None = None
    schedule: str | None = None  # bptt's execution schedule, where it has one
    first_call_s: float | None = None  # the first call, compilation included
    samples: list[float] = field(default_factory=list)  # ms per call, one per block
    update_samples: list[float] = field(default_factory=list)
    calls_per_block: dict[str, int] = field(default_factory=dict)  # "step", "update"
    retries: int = 0  # blocks timed again because another process was busy
    contended: int = 0  # blocks kept although never quiet


def time_one_call(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> float:
    """Seconds taken by one call of ``fn``, the device synchronised before and after."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def traced_peak(fn: Callable[[], Any], before: Callable[[], None] = lambda: None) -> int:
    """Peak bytes allocated during one call (NumPy reports its buffers to tracemalloc)."""
    before()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def others_cpu() -> float | None:
    """CPU seconds used so far by everything but this process (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # less idle, iowait
    mine = os.times()
    return busy / os.sysconf("SC_CLK_TCK") - mine.user - mine.system


def _block(fn: Callable[[], Any], sync: Callable[[], None], n: int, pause: float) -> float:
    """ms per call of ``n`` calls, after a pause and one untimed call."""
    sync()
    time.sleep(pause)
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1e3 / n


def _quiet_block(case: Case, fn: Callable[[], Any], n: int, pause: float, guard: float) -> float:
    """A block during which other processes used under ``guard`` of a core, if one comes.

    On a shared machine a block that overlaps someone else's work is retried (up
    to 5 times, resting between tries); ``case.retries`` counts the retries and
    ``case.contended`` the blocks kept although never quiet (flagged in the table).
    """
    for _ in range(6):
        before, t0 = others_cpu(), time.perf_counter()
        ms = _block(fn, case.sync, n, pause)
        after, wall = others_cpu(), time.perf_counter() - t0
        if guard <= 0 or before is None or after is None or (after - before) < guard * wall:
            return ms
        case.retries += 1
        time.sleep(0.5)
    case.contended += 1
    return ms


def _calls_per_block(fn: Callable[[], Any], sync: Callable[[], None], min_block: float) -> int:
    """Warm up (:data:`WARMUP_CALLS` untimed calls), then size a block from one timed call."""
    for _ in range(WARMUP_CALLS):
        fn()
        sync()
    one = time_one_call(fn, sync) * 1e3  # ms, a warm call
    return max(1, round(min_block * 1e3 / max(one, 1e-3)))


def time_blocks(
    cases: list[Case], *, reps: int, pause: float, min_block: float, guard: float = 0.0
) -> None:
    """Fill ``case.samples`` (and ``update_samples``) with ``reps`` interleaved blocks each.

    Each block lasts about ``min_block`` seconds. ``guard`` > 0 retries blocks
    during which other processes used more than that fraction of a core.
    """
    for case in cases:
        case.calls_per_block["step"] = _calls_per_block(case.step, case.sync, min_block)
        if case.update is not None:
            case.calls_per_block["update"] = _calls_per_block(case.update, case.sync, min_block)
    for _ in range(reps):
        for case in cases:
            n = case.calls_per_block["step"]
            case.samples.append(_quiet_block(case, case.step, n, pause, guard))
    for _ in range(reps):
        for case in cases:
            if case.update is not None:
                n = case.calls_per_block["update"]
                case.update_samples.append(_quiet_block(case, case.update, n, pause, guard))


def stats(samples: list[float]) -> dict[str, float] | None:
    """Median and spread (interquartile range over the median, in %) of a list of ms."""
    if not samples:
        return None
    q = np.percentile(samples, [25, 50, 75])
    return {"median": float(q[1]), "iqr_pct": float(100 * (q[2] - q[0]) / q[1])}
