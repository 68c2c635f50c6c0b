"""One BPTT step with the batched products overlapped with the recurrence.

The T steps are cut into blocks (:func:`bptt._parallel.time_blocks`). This
thread runs the two sequential parts, eqs. (19)-(20) forward and the dz
recurrence backward, block after block; as soon as a block's part is done, a
worker (:func:`bptt._parallel.overlapped`) runs everything about it that is one
matrix product over the block's n*B rows::

    forward, block k done:   logits, head, dV, dc, dS   (eqs. 21-23, 44, 54, 56)
    backward, block k done:  dW, dU, db                 (eqs. 67, 69, 72, 73)

so on a 2-core machine the products of block k run beside the recurrence of
block k+1 (k-1 backward). The backward recurrence of block k needs block k's
dS, so it waits for that task. The functions are those of :mod:`bptt.model`;
only the order in which blocks add into dV, dW, dU, db and the loss differs
from the one-block path (float rounding). The worker runs tasks in order, so
the result does not depend on thread timing.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from . import model
from .heads import HEADS, loss_weights, reduce

__all__ = ["loss_and_grad"]


def loss_and_grad(
    params: Any,
    inputs: Any,
    targets: Any,
    *,
    h0: Any,
    head: str,
    mask: Any,
    reduction: str,
    keep: Any,
    xp: Any,
    blocks: list[range],
    worker: Any,
) -> tuple[Any, dict[str, Any], model.Cache]:
    """Reduced loss (0-d), gradients (keys of ``params``) and the forward cache.

    Arguments as in :func:`bptt.api.loss_and_grad` (checked there), ``keep`` the
    dropout multipliers; ``blocks`` consecutive ranges covering 0..T-1; ``worker``
    has ``submit(fn, *args) -> Future``.
    """
    states = model.input_projection(params, inputs, xp)  # (T, B, D): U x_t + b
    T, B, _ = states.shape
    cache = model.Cache(inputs, h0, states, keep)
    shape = (T, B, params["V"].shape[0])
    weights = loss_weights(
        mask, shape, head=head, reduction=reduction, dtype=states.dtype, xp=xp
    )  # a float, or (T, B)
    # Each block's task writes only its own slots, and the slots are summed in
    # block order at the end: the result does not depend on which thread ran
    # which task (this thread takes over tasks the worker has not started).
    parts: list[dict[str, Any]] = [{} for _ in blocks]  # per block: loss, dV, dc, dW, db, dU
    dZ: list[Any] = [None] * len(blocks)  # (n, B, D) per block: dS_t, then dz_t

    def output_block(k: int) -> None:  # eqs. (21)-(23), (44), (54), (56) on block k
        steps = blocks[k]
        rows = slice(steps.start, steps.stop)
        keep_k = None if keep is None else keep[rows, ...]  # (n, B, D)
        logits, seen = model.output(params, states[rows, ...], keep_k, xp)  # (n, B, C)
        terms, dlogits = HEADS[head](logits, targets[rows, ...], xp)  # (n, B), (n, B, C)
        w = weights if isinstance(weights, float) else weights[rows, ...]
        parts[k]["loss"], dlogits = reduce(terms, dlogits, w, xp)
        model.add_output_grads(parts[k], params, dlogits, seen, xp)  # dV, dc
        dZ[k] = model.state_grads(params, dlogits, keep_k, xp)  # (n, B, D)

    def weight_block(k: int) -> None:  # eqs. (67)-(73) on block k
        model.add_weight_grads(parts[k], params, dZ[k], cache, blocks[k], xp)

    W = params["W"]  # (D, D)
    output_tasks: list[Future[Any]] = []  # output_block(k), submitted k = 0, 1, ...
    weight_tasks: list[Future[Any]] = []  # weight_block(k), submitted k = K-1, ..., 0
    try:
        s = h0  # (B, D) or None
        for k, steps in enumerate(blocks):
            s = model.recurrence(W, states, s, steps, xp, split=False)  # eqs. (19)-(20)
            output_tasks.append(worker.submit(output_block, k))
        dz = None  # (B, D): dz of the step after the block
        for k in reversed(range(len(blocks))):
            _finish(output_tasks[k], output_block, k)  # block k's dS_t is ready
            rows = slice(blocks[k].start, blocks[k].stop)
            dz = model.reverse_recurrence(W, states[rows, ...], dZ[k], dz)  # eq. (62)
            weight_tasks.append(worker.submit(weight_block, k))
        for k, task in enumerate(reversed(weight_tasks)):  # the last submitted (k = 0) first
            _finish(task, weight_block, k)
    finally:  # after an error: drop what has not begun, wait for what has
        for task in output_tasks + weight_tasks:
            if not task.cancel():
                task.exception()  # waits; the error, if any, was raised above
    total = parts[0]  # fresh arrays of this call: summed into in place
    for part in parts[1:]:  # block order, whoever ran the blocks
        for key, value in part.items():
            total[key] += value
    return total["loss"], {key: total[key] for key in params}, cache


def _finish(task: Future[Any], fn: Any, k: int) -> None:
    """Wait for ``task`` (``fn(k)`` on the worker), or run it here if it has not begun."""
    if task.cancel():
        fn(k)
    else:
        task.result()  # re-raises the task's error here
