"""The batch-split schedule: the batch cut into parts, each part's whole step on its
own thread.

The B sequences of a batch never meet in eqs. (19)-(23): row b of s_t depends only
on row b of s_{t-1} and of x_t. So each part of the batch
(:func:`bptt.execution.numpy_exec.policy.batch_parts`) runs the whole single-block step,
:func:`bptt.math.step.loss_and_grad`, on its own thread, with no hand-over until the
end. Only the loss and the parameter gradients couple the parts: they are sums
over b as well as over t (eqs. 71-73), so the parts' sums are added in part order::

    dW = sum_parts sum_t dz_t s_{t-1}^T      (the same for dU, db, dV, dc, loss)

The loss weights (a mean's 1/N, a mask's weights) are the whole batch's, cut like
the batch. Only the order of the sums over b differs from the single schedule
(float rounding), and the parts are added in a fixed order whatever thread ran them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...math import step
from . import recurrences

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
    parts: list[slice],
    run: Callable[..., list[Any]],
    cell: str = "tanh",
    layer_masks: Any = None,
) -> tuple[Any, dict[str, Any], Any]:
    """``(loss, grads, h_last)`` as :func:`bptt.math.step.loss_and_grad`, part by part.

    ``parts`` consecutive slices covering 0..B-1; ``run(fn, parts)`` returns
    ``[fn(part) for part in parts]``, on threads or here. Any stack (the batch axis of
    h0 and h_last is their second-to-last: (B, D) or (L K, B, D)).
    """

    def part_step(rows: slice) -> tuple[Any, dict[str, Any], Any]:
        def cut(x: Any) -> Any:  # the part's columns of a (T, B, ...) array
            return None if x is None or isinstance(x, float) else x[:, rows, ...]

        masks = None if layer_masks is None else [cut(m) for m in layer_masks]
        return step.loss_and_grad(
            params, cut(inputs), cut(targets), h0=None if h0 is None else h0[..., rows, :],
            head=head, weights=weights if isinstance(weights, float) else cut(weights),
            dropout_mask=cut(dropout_mask), xp=xp, recurrences=recurrences,
            cell=cell, layer_masks=masks,
        )  # fmt: skip

    results = run(part_step, parts)
    loss, grads, _ = results[0]  # fresh arrays of this call: summed into in place
    for part_loss, part_grads, _ in results[1:]:  # part order, whoever ran the parts
        loss = loss + part_loss
        for key in grads:
            grads[key] += part_grads[key]
    return loss, grads, xp.concat([h for _, _, h in results], axis=-2)  # (B, D) or (L K, B, D)
