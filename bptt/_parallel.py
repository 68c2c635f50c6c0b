"""NumPy's execution policy: large elementwise work split across threads.

NumPy's ``tanh`` and ``exp`` are single-threaded (and, on CPUs without AVX-512,
scalar: about 3 ns per float32 and 15 ns per float64 here), so on a 2-core
machine the forward recurrence's ``tanh`` and the softmax head leave a core
idle while BLAS uses both for the products. This module cuts such work into
row blocks run on a small thread pool (NumPy releases the GIL inside ufuncs).
The arithmetic is the same array-API code on each block, so results are
bitwise equal to an unsplit run; only NumPy namespaces are ever split (on a GPU
the work is one kernel anyway).

Measured (benchmarks/NOTES.md): a hand-over between threads costs tens of
microseconds on this VM, so only blocks worth more than that are split, and
BLAS products are never split here (OpenBLAS threads them itself; splitting
the batch of the recurrence across Python threads was slower). For small
recurrences OpenBLAS's own second thread costs more than it gives:
:func:`small_blas` runs them on one (with ``threadpoolctl``, if installed).

``BPTT_THREADS=N`` or :func:`set_max_threads` caps the threads (1 turns it off);
the default is the number of CPUs, at most 4.

Mid-sized models go further (:mod:`bptt.overlap`): the step is cut into blocks of
time steps, and a worker thread runs each block's batched products while this
thread runs the next block's recurrence, all BLAS calls on one thread each.
:func:`time_blocks` decides; ``BPTT_OVERLAP=on|off|auto`` or :func:`set_overlap`
overrides (``on`` also runs the blocks, inline, off NumPy: for tests).

Large models go further still (:mod:`bptt.split`): the batch is cut into one part
per thread, and each part's whole step runs on its own thread, every BLAS call on
one thread; :func:`batch_parts` decides, ``BPTT_SPLIT=on|off|auto`` or
:func:`set_split` overrides, and where it applies it comes before the overlap.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = [
    "batch_parts",
    "max_threads",
    "overlapped",
    "row_blocks",
    "run_blocks",
    "set_max_threads",
    "set_overlap",
    "set_split",
    "small_blas",
    "split_runner",
    "time_blocks",
]

Block = TypeVar("Block")

# Work units below which a block is not worth a thread hand-over: float32
# elements of tanh/exp (a float64 element counts 5, as its libm call is ~5x slower).
MIN_WORK = 24 * 1024

# The same for the softmax head, made once per step: by then the pool's thread has
# slept since its last task, and waking it costs 100-400 us here, so a block must
# carry more; exp is ~2x slower in float64, not 5x. Measured split/one-block time,
# float32: 52k elements 1.58, 208k 1.32, 416k 0.75; float64: 104k 1.24, 208k 0.76.
HEAD_MIN_WORK = 160 * 1024
HEAD_FLOAT64_COST = 2

# Multiply-adds of one recurrence product (B * D * D) below which OpenBLAS runs a
# step faster on one thread than on two (S1, B=32 D=100: 2x faster on one).
MIN_BLAS_WORK = 1 << 20

# Multiply-adds of one recurrence product (B * D * D) for which the overlapped step
# was measured to win, and how many blocks of time steps it cuts T into
# (benchmarks/NOTES.md, time over the one-block step, float32 / float64: D=128 B=64
# (1.0M) 0.71 / -, S2 (4.2M) 0.72 / 0.74, S3 (33.5M) 0.78-0.93 / 0.86; S1 (0.32M)
# loses in float32, 1.03-1.61, as the hand-overs cost more than a block's work).
OVERLAP_WORK = (1 << 20, 1 << 26)
OVERLAP_BLOCKS = 10
MIN_BLOCK_STEPS = 2  # auto never makes blocks of one step: T >= 2 * MIN_BLOCK_STEPS

# Multiply-adds of one recurrence product (B * D * D, a float64 one counting 4) from
# which the batch split (bptt.split) was measured to beat the overlap, and the
# fewest rows of a part (benchmarks/NOTES.md, item 19; split over overlap, float32:
# 64x512 0.91, S3 0.88, 128x1024 0.81, but 128x256 1.13 and S2 1.05; float64: S2
# 0.92, 128x256 0.94, S3 0.86).
SPLIT_WORK = 1 << 24
SPLIT_FLOAT64_COST = 4
MIN_PART_ROWS = 32

_lock = threading.Lock()
_state: dict[str, Any] = {
    "override": None,
    "pool": None,
    "size": 0,
    "overlap": None,
    "split": None,
}
_local = threading.local()  # .serial: no row-block split; .one_blas: BLAS limited already
_NUMPY_NAMESPACES = ("numpy", "array_api_compat.numpy")


def max_threads() -> int:
    """Threads an elementwise pass may use: set, else ``BPTT_THREADS``, else min(CPUs, 4)."""
    n = _state["override"]
    if n is None and os.environ.get("BPTT_THREADS"):
        n = int(os.environ["BPTT_THREADS"])
    if n is None:
        n = min(_cpus(), 4)
    return max(1, n)


@functools.cache
def _cpus() -> int:
    return os.cpu_count() or 1  # a syscall per call, ~10 us: asked once


def set_max_threads(n: int | None) -> None:
    """Cap the threads of the split (1 turns it off); ``None`` restores the default."""
    _state["override"] = n


def _is_numpy(xp: Any) -> bool:
    return getattr(xp, "__name__", "") in _NUMPY_NAMESPACES


def row_blocks(
    xp: Any,
    rows: int,
    elements: int,
    itemsize: int = 4,
    *,
    min_work: int | None = None,
    float64_cost: int = 5,
) -> list[slice]:
    """Row blocks for an elementwise pass over ``elements`` entries in ``rows`` rows.

    One block (``[slice(0, rows)]``) unless ``xp`` is NumPy and each block would
    carry at least ``min_work`` units of work (default :data:`MIN_WORK`, for a pass
    made every time step; :data:`HEAD_MIN_WORK` for one made once per step). A
    float32 element is one unit, a float64 element ``float64_cost``.
    """
    if not _is_numpy(xp) or getattr(_local, "serial", False):
        return [slice(0, rows)]
    work = elements * (float64_cost if itemsize >= 8 else 1)
    n = min(max_threads(), rows, work // (MIN_WORK if min_work is None else min_work))
    if n <= 1:
        return [slice(0, rows)]
    edges = [rows * i // n for i in range(n + 1)]
    return [slice(edges[i], edges[i + 1]) for i in range(n)]


def _pool(n: int) -> ThreadPoolExecutor:
    with _lock:
        if _state["pool"] is None or _state["size"] < n:
            _state["pool"] = ThreadPoolExecutor(n, thread_name_prefix="bptt")
            _state["size"] = n
        return _state["pool"]


def run_blocks(fn: Callable[[Block], None], blocks: Sequence[Block]) -> None:
    """``fn(block)`` for every block: here alone, or the first here and the rest on the pool."""
    if len(blocks) == 1:
        fn(blocks[0])
        return
    futures = [_pool(len(blocks) - 1).submit(fn, block) for block in blocks[1:]]
    try:
        fn(blocks[0])
    finally:
        for future in futures:
            future.result()


def _blas() -> Any:
    """threadpoolctl's controller of the BLAS libraries, or None without threadpoolctl."""
    with _lock:
        if "blas" not in _state:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:
                _state["blas"] = None
            else:
                _state["blas"] = ThreadpoolController().select(user_api="blas")
        return _state["blas"]


@contextmanager
def small_blas(xp: Any, work: int) -> Iterator[None]:
    """One BLAS thread inside the block when ``xp`` is NumPy and ``work`` (the
    multiply-adds of one recurrence product) is below :data:`MIN_BLAS_WORK`.

    Needs ``threadpoolctl`` (else a no-op); the limit is process-wide while it lasts.
    """
    if work >= MIN_BLAS_WORK or not _is_numpy(xp):
        yield
        return
    with _one_blas_thread():
        yield


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    blas = _blas()
    if blas is None or getattr(_local, "one_blas", False):  # none, or already limited here
        yield
        return
    _local.one_blas = True
    try:
        with blas.limit(limits=1):
            yield
    finally:
        _local.one_blas = False


_MODES = ("on", "off", "auto")


def set_overlap(mode: str | None) -> None:
    """``"on"``, ``"off"``, or ``None`` for ``BPTT_OVERLAP`` else ``"auto"``."""
    if mode not in (None, *_MODES):
        raise ValueError(f"overlap mode must be 'on', 'off' or 'auto', not {mode!r}")
    _state["overlap"] = mode


def set_split(mode: str | None) -> None:
    """``"on"``, ``"off"``, or ``None`` for ``BPTT_SPLIT`` else ``"auto"``."""
    if mode not in (None, *_MODES):
        raise ValueError(f"split mode must be 'on', 'off' or 'auto', not {mode!r}")
    _state["split"] = mode


def _mode(key: str, variable: str) -> str:
    mode = _state[key] or os.environ.get(variable) or "auto"
    if mode not in _MODES:
        raise ValueError(f"{variable} must be 'on', 'off' or 'auto', not {mode!r}")
    return mode


def overlap_mode() -> str:
    return _mode("overlap", "BPTT_OVERLAP")


def split_mode() -> str:
    return _mode("split", "BPTT_SPLIT")


def threads_usable(xp: Any) -> bool:
    """Whether ``auto`` may use threads for ``xp``: NumPy, 2+ threads, threadpoolctl."""
    return _is_numpy(xp) and max_threads() > 1 and _blas() is not None


def time_blocks(xp: Any, T: int, B: int, D: int) -> list[range]:
    """Blocks of time steps for :mod:`bptt.overlap`; ``[range(T)]`` means do not overlap.

    ``auto`` overlaps on NumPy with threadpoolctl and 2+ threads, when one recurrence
    product's B*D^2 lies in :data:`OVERLAP_WORK` and T gives blocks of 2+ steps.
    """
    mode = overlap_mode()
    n = min(T, OVERLAP_BLOCKS)
    if mode == "off":
        n = 1
    elif mode == "auto":
        work = B * D * D
        fits = threads_usable(xp) and OVERLAP_WORK[0] <= work < OVERLAP_WORK[1]
        n = min(n, T // MIN_BLOCK_STEPS) if fits else 1
    edges = [T * i // n for i in range(n + 1)] if n > 1 else [0, T]
    return [range(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def batch_parts(xp: Any, B: int, D: int, itemsize: int = 4) -> list[slice]:
    """Parts of the batch for :mod:`bptt.split`; ``[slice(0, B)]`` means do not split.

    ``auto`` splits on NumPy with threadpoolctl and 2+ threads when one recurrence
    product's B*D^2 (times :data:`SPLIT_FLOAT64_COST` for 8-byte floats) is at least
    :data:`SPLIT_WORK`, into one part per thread of at least :data:`MIN_PART_ROWS`
    rows; ``on`` into one part per thread (at least 2, at most B), also off NumPy,
    where the parts run here one after the other.
    """
    mode = split_mode()
    n = 1
    work = B * D * D * (SPLIT_FLOAT64_COST if itemsize >= 8 else 1)
    if mode == "on":
        n = min(max(2, max_threads()), B)
    elif mode == "auto" and work >= SPLIT_WORK and threads_usable(xp):  # cheap test first
        n = min(max_threads(), B // MIN_PART_ROWS)
    edges = [B * i // n for i in range(n + 1)] if n > 1 else [0, B]
    return [slice(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


class _Inline:
    """An executor that runs each task at once, here (off NumPy, or one thread)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to .result(), as a thread's would be
            future.set_exception(exc)
        return future


def _serial(fn: Callable[..., Any], *args: Any) -> Any:
    _local.serial = True  # the worker's own work is not split again
    return fn(*args)


class _Worker:
    """One thread that runs the overlapped tasks in order (so sums add in one order)."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._pool.submit(_serial, fn, *args)


def _in_part(fn: Callable[..., Any], *args: Any) -> Any:
    """A pool thread's part of a split step: no row-block split, BLAS limited already."""
    was = getattr(_local, "serial", False), getattr(_local, "one_blas", False)
    _local.serial = _local.one_blas = True
    try:
        return fn(*args)
    finally:
        _local.serial, _local.one_blas = was


def _run_parts(fn: Callable[[Block], Any], parts: Sequence[Block]) -> list[Any]:
    """``[fn(part) for part in parts]``: the first here, the rest on the pool; a part
    the pool has not begun when this thread is done with its own runs here."""
    tasks = [_pool(len(parts) - 1).submit(_in_part, fn, part) for part in parts[1:]]
    try:
        results = [fn(parts[0])]
        for task, part in zip(tasks, parts[1:], strict=True):
            results.append(fn(part) if task.cancel() else task.result())
    finally:  # after an error: drop what has not begun, wait for what has
        for task in tasks:
            if not task.cancel():
                task.exception()
    return results


def _run_inline(fn: Callable[[Block], Any], parts: Sequence[Block]) -> list[Any]:
    return [fn(part) for part in parts]


@contextmanager
def split_runner(xp: Any) -> Iterator[Callable[..., list[Any]]]:
    """``run(fn, parts)`` for :mod:`bptt.split`: on NumPy with 2+ threads the parts run
    on the pool's threads and this one, every BLAS call on one thread and no row-block
    split on any of them; elsewhere one after the other, here."""
    if not _is_numpy(xp) or max_threads() < 2:
        yield _run_inline
        return
    was = getattr(_local, "serial", False)
    _local.serial = True
    try:
        with _one_blas_thread():
            yield _run_parts
    finally:
        _local.serial = was


@contextmanager
def overlapped(xp: Any) -> Iterator[Any]:
    """The executor for :mod:`bptt.overlap`: a worker thread on NumPy (with every BLAS
    call on one thread, and no row-block split on either thread), else inline."""
    if not _is_numpy(xp) or max_threads() < 2:
        yield _Inline()
        return
    with _lock:
        if "worker" not in _state:
            _state["worker"] = ThreadPoolExecutor(1, thread_name_prefix="bptt-overlap")
    was = getattr(_local, "serial", False)
    _local.serial = True
    try:
        with _one_blas_thread():
            yield _Worker(_state["worker"])
    finally:
        _local.serial = was
