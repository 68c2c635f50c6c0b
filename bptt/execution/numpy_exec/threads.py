"""Threads for the NumPy schedules: the pool, the ordered worker, BLAS thread limits.

A hand-over between Python threads costs tens of microseconds on a small VM, and
two threads share the interpreter lock between NumPy calls, so the schedules of
this package hand over whole blocks of work, never single time steps. Every BLAS
call inside a threaded schedule runs on one BLAS thread (threadpoolctl): the
schedule's own threads are the parallelism. ``BPTT_THREADS=N`` caps the threads
(1: no threads); the default is the number of CPUs, at most 4.
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
    "InlineExecutor",
    "OrderedWorker",
    "blas_controller",
    "max_threads",
    "one_blas_thread",
    "ordered_worker",
    "run_parts",
]

Part = TypeVar("Part")
_local = threading.local()  # .one_blas: this thread's BLAS calls are limited already


def max_threads() -> int:
    """Threads a NumPy schedule may use: ``BPTT_THREADS``, else min(CPUs, 4)."""
    text = os.environ.get("BPTT_THREADS")
    if text:
        try:
            return max(1, int(text))
        except ValueError:
            raise ValueError(f"BPTT_THREADS must be a positive integer; got {text!r}") from None
    return max(1, min(_cpus(), 4))


@functools.cache
def _cpus() -> int:
    return os.cpu_count() or 1  # a syscall, ~10 us: asked once


@functools.cache
def blas_controller() -> Any:
    """threadpoolctl's controller of the BLAS libraries, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Every BLAS call inside the block on one thread (process-wide while it lasts).

    A no-op without threadpoolctl, and inside a block that already limits them.
    """
    blas = blas_controller()
    if blas is None or getattr(_local, "one_blas", False):
        yield
        return
    _local.one_blas = True
    try:
        with blas.limit(limits=1):
            yield
    finally:
        _local.one_blas = False


@functools.cache
def _pool(size: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(size, thread_name_prefix=f"bptt-{size}")


class InlineExecutor:
    """An executor that runs each task at once, on this thread (one thread allowed)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to .result(), as a thread's would be
            future.set_exception(exc)
        return future


class OrderedWorker:
    """One thread that runs submitted tasks in submission order (sums add in one order)."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="bptt-overlap")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._thread.submit(fn, *args)


@functools.cache
def ordered_worker() -> OrderedWorker:
    """The process's one overlap worker, started on first use."""
    return OrderedWorker()


def run_parts(fn: Callable[[Part], Any], parts: Sequence[Part]) -> list[Any]:
    """``[fn(part) for part in parts]``: the first on this thread, the rest on the pool.

    A part the pool has not begun when this thread is done with its own runs here.
    The BLAS limit is process-wide: every thread's BLAS calls run on one thread.
    """
    if len(parts) == 1 or max_threads() < 2:
        return [fn(part) for part in parts]
    with one_blas_thread():
        tasks = [_pool(len(parts) - 1).submit(fn, part) for part in parts[1:]]
        try:
            results = [fn(parts[0])]
            for task, part in zip(tasks, parts[1:], strict=True):
                results.append(fn(part) if task.cancel() else task.result())
        finally:
            cancel_and_wait(tasks)
    return results


def cancel_and_wait(tasks: Sequence[Future[Any]]) -> None:
    """After an error: drop the tasks that have not begun, wait for those that have."""
    for task in tasks:
        if not task.cancel():
            task.exception()  # waits; an error was raised where it was awaited
