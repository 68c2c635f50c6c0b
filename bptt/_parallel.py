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
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["max_threads", "row_blocks", "run_blocks", "set_max_threads", "small_blas"]

Block = TypeVar("Block")

# Work units below which a block is not worth a thread hand-over: float32
# elements of tanh/exp (a float64 element counts 5, as its libm call is ~5x slower).
MIN_WORK = 24 * 1024

# Multiply-adds of one recurrence product (B * D * D) below which OpenBLAS runs a
# step faster on one thread than on two (S1, B=32 D=100: 2x faster on one).
MIN_BLAS_WORK = 1 << 20

_lock = threading.Lock()
_state: dict[str, Any] = {"override": None, "pool": None, "size": 0}
_NUMPY_NAMESPACES = ("numpy", "array_api_compat.numpy")


def max_threads() -> int:
    """Threads an elementwise pass may use: set, else ``BPTT_THREADS``, else min(CPUs, 4)."""
    n = _state["override"]
    if n is None and os.environ.get("BPTT_THREADS"):
        n = int(os.environ["BPTT_THREADS"])
    if n is None:
        n = min(os.cpu_count() or 1, 4)
    return max(1, n)


def set_max_threads(n: int | None) -> None:
    """Cap the threads of the split (1 turns it off); ``None`` restores the default."""
    _state["override"] = n


def row_blocks(xp: Any, rows: int, elements: int, itemsize: int = 4) -> list[slice]:
    """Row blocks for an elementwise pass over ``elements`` entries in ``rows`` rows.

    One block (``[slice(0, rows)]``) unless ``xp`` is NumPy and each block would
    carry at least :data:`MIN_WORK` units of work.
    """
    if getattr(xp, "__name__", "") not in _NUMPY_NAMESPACES:
        return [slice(0, rows)]
    work = elements * (5 if itemsize >= 8 else 1)
    n = min(max_threads(), rows, work // MIN_WORK)
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
    if work >= MIN_BLAS_WORK or getattr(xp, "__name__", "") not in _NUMPY_NAMESPACES:
        yield
        return
    blas = _blas()
    if blas is None:
        yield
        return
    with blas.limit(limits=1):
        yield
