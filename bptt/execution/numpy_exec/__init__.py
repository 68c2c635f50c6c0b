"""How a step runs on NumPy: the execution layer around the pure math.

NumPy runs each array operation on the calling thread (BLAS aside), so a step on
a multi-core CPU leaves cores idle unless it is arranged across threads. This
package holds those arrangements, for NumPy namespaces only:

- ``"single"``: the pure step (:func:`bptt.math.step.loss_and_grad`), its BLAS calls
  on one thread when a recurrence product is too small to share;
- ``"overlap"`` (:mod:`.overlap`): blocks of time steps, the batched products of
  one block on a worker thread beside the recurrence of the next;
- ``"split"`` (:mod:`.batch_split`): parts of the batch, each part's whole step on
  its own thread.

:func:`schedule` returns one of them as a function with the signature of
:func:`bptt.math.step.loss_and_grad`; :func:`bptt.execution.numpy_exec.policy.choose` is what
``"auto"`` picks. All give the same result to rounding, and the same bits on
every run.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

from ...math import step
from . import batch_split, overlap, policy, recurrences, threads

__all__ = ["SCHEDULES", "blas_context", "schedule"]

SCHEDULES = ("single", "overlap", "split")


def schedule(name: str, T: int, B: int, D: int, *, forced: bool) -> Callable[..., Any]:
    """The NumPy schedule ``name`` for a (T, B, D) step, as a function of
    ``(params, inputs, targets, *, h0, head, weights, dropout_mask, xp, cell,
    layer_masks)``.

    ``forced``: the caller named the schedule (blocks and parts then follow the
    thread count alone, not the measured break-even points).
    """
    if name == "overlap":
        worker = threads.ordered_worker() if policy.threads_usable() else None
        blocks = policy.time_blocks(T, forced=forced)
        return functools.partial(_overlapped, blocks=blocks, worker=worker)
    if name == "split":
        parts = policy.batch_parts(B, forced=forced)
        return functools.partial(batch_split.loss_and_grad, parts=parts, run=threads.run_parts)
    if B * D * D < policy.MIN_BLAS_WORK:
        return _single_on_one_blas_thread
    return functools.partial(step.loss_and_grad, recurrences=recurrences)


def blas_context(B: int, D: int) -> Any:
    """The BLAS thread limit of the single schedule for a (B, D) recurrence: one thread
    below :data:`policy.MIN_BLAS_WORK`, else none."""
    if B * D * D < policy.MIN_BLAS_WORK:
        return threads.one_blas_thread()
    return contextlib.nullcontext()


def _single_on_one_blas_thread(*args: Any, **kwargs: Any) -> Any:
    with threads.one_blas_thread():
        return step.loss_and_grad(*args, recurrences=recurrences, **kwargs)


def _overlapped(*args: Any, worker: Any, **kwargs: Any) -> Any:
    if worker is None:  # one thread allowed, or no threadpoolctl: the blocks run here
        return overlap.loss_and_grad(*args, worker=threads.InlineExecutor(), **kwargs)
    with threads.one_blas_thread():
        return overlap.loss_and_grad(*args, worker=worker, **kwargs)
