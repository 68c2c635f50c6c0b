"""The overlapped schedule: the batched products of one block of steps beside the
recurrence of the next.

The T steps are cut into blocks (:func:`bptt.execution.numpy_exec.policy.time_blocks`).
This thread runs the two sequential parts, eqs. (19)-(20) forward and the dz
recurrence backward, block after block; as soon as a block's part is done, an
ordered worker thread runs everything about it that is one matrix product over
the block's n*B rows::

    forward, block k done:   logits, head, dV, dc, dS   (step.head_and_output_grads)
    backward, block k done:  dW, dU, db                 (model.weight_grads)

so on two cores the products of block k run beside the recurrence of block k+1
(k-1 backward). The backward recurrence of block k needs block k's dS, so it
waits for that task, or runs it here if the worker has not begun it. Each block
writes its own slot and the slots are added in block order at the end: the bits
do not depend on which thread ran what. Only the order of the sums over t differs
from the single schedule (float rounding).
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from ...math import model, step
from . import recurrences
from .threads import cancel_and_wait

__all__ = ["loss_and_grad"]


def loss_and_grad(
    params: Any,
    inputs: Any,
    targets: Any,
    *,
    h0: Any,
    head: str,
    weights: Any,
    dropout_mask: Any,
    xp: Any,
    blocks: list[range],
    worker: Any,
    cell: str = "tanh",
    layer_masks: Any = None,
) -> tuple[Any, dict[str, Any], Any]:
    """``(loss, grads, h_last)`` as :func:`bptt.math.step.loss_and_grad`, block by block.

    ``blocks`` consecutive ranges covering 0..T-1; ``worker.submit(fn, *args)``
    returns a Future and runs tasks in submission order. One layer of one direction
    only (``layer_masks`` must be None: :func:`bptt.execution.schedules.resolve` refuses a stack).
    """
    if layer_masks is not None:
        raise ValueError("layer_masks: the overlapped schedule runs one layer only")
    xu = model.input_projection(params, inputs, xp)  # (T, B, D): U x_t + b
    W = params["W"]  # (D, D)
    rows = [slice(steps.start, steps.stop) for steps in blocks]
    states: list[Any] = [None] * len(blocks)  # (n+1, B, D) per block: s_{a-1} .. s_{b-1}
    sums: list[dict[str, Any]] = [{} for _ in blocks]  # per block: loss, dV, dc, dW, db, dU
    dS: list[Any] = [None] * len(blocks)  # (n, B, D) per block

    def rows_of(x: Any, k: int) -> Any:
        return None if x is None or isinstance(x, float) else x[rows[k], ...]

    def output_block(k: int) -> None:  # step.head_and_output_grads on block k
        sums[k]["loss"], grads, dS[k] = step.head_and_output_grads(
            params, states[k][1:, ...], targets[rows[k], ...], head=head, xp=xp,
            weights=weights if isinstance(weights, float) else weights[rows[k], ...],
            dropout_mask=rows_of(dropout_mask, k),
        )  # fmt: skip
        sums[k].update(grads)

    dZ: list[Any] = [None] * len(blocks)

    def weight_block(k: int) -> None:  # eqs. (67)-(73) on block k
        grads = model.weight_grads(params, dZ[k], states[k], inputs[rows[k], ...], xp)
        sums[k].update(grads)
        dZ[k] = states[k] = None  # let each block's arrays go once used: a lower peak

    output_tasks: list[Future[Any]] = []  # output_block(k), submitted k = 0, 1, ...
    weight_tasks: list[Future[Any]] = []  # weight_block(k), submitted k = K-1, ..., 0
    try:
        s = h0  # (B, D) or None
        for k in range(len(blocks)):
            states[k] = recurrences.recurrence(W, xu[rows[k], ...], s, xp, cell)  # (19)
            s = states[k][-1, ...]
            output_tasks.append(worker.submit(output_block, k))
        xu = None  # every block's U x_t + b is in its states now
        dz = None  # (B, D): dz of the step after the block
        for k in reversed(range(len(blocks))):
            _finish(output_tasks[k], output_block, k)  # block k's dS is ready
            dZ[k] = recurrences.reverse_recurrence(W, states[k], dS[k], dz, xp, cell)  # eq. (62)
            dS[k], dz = None, dZ[k][0, ...]
            weight_tasks.append(worker.submit(weight_block, k))
        for k, task in enumerate(reversed(weight_tasks)):  # the last submitted (k = 0) first
            _finish(task, weight_block, k)
    finally:  # after an error: drop what has not begun, wait for what has
        cancel_and_wait(output_tasks + weight_tasks)
    total = sums[0]  # fresh arrays of this call: summed into in place
    for part in sums[1:]:  # block order, whoever ran the blocks
        for key, value in part.items():
            total[key] += value
    return total["loss"], {key: total[key] for key in params}, s


def _finish(task: Future[Any], fn: Any, k: int) -> None:
    """Wait for ``task`` (``fn(k)`` on the worker), or run it here if it has not begun."""
    if task.cancel():
        fn(k)
    else:
        task.result()  # re-raises the task's error here
