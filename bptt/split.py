"""One BPTT step with the batch cut into parts, each part's whole step on its own thread.

The B sequences of a batch never meet in eqs. (19)-(23): row b of s_t depends
only on row b of s_{t-1} and of x_t. So the batch can be cut into parts
(:func:`bptt._parallel.batch_parts`), and each part runs the plain one-block
step of :mod:`bptt.model`, forward, head and backward, on its own thread with one
BLAS thread, with no hand-over between the threads until the end. Only the
parameter gradients and the loss couple the parts: they are sums over b as well
as over t (eqs. 71-73), so each part's sums are added, in part order::

    dW = sum_parts sum_t dz_t s_{t-1}^T      (the same for dU, db, dV, dc, loss)

The loss weights (the 1/N of a mean, or a mask's weights) are those of the whole
batch, cut like the batch, so every step counts as in one block. Only the order
of the additions over b differs from the one-block path (float rounding); the
parts run in a fixed order, so the bits do not depend on thread timing.

This pays where each part's recurrence product (B/parts x D)(D x D) is large
enough to keep a core busy between the few hand-overs (benchmarks/NOTES.md);
:mod:`bptt.overlap` is the policy for smaller models.
"""

from __future__ import annotations

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
    parts: list[slice],
    run: Any,
) -> tuple[Any, dict[str, Any], Any]:
    """Reduced loss (0-d), gradients (keys of ``params``) and the last state (B, D).

    Arguments as in :func:`bptt.api.loss_and_grad` (checked there), ``keep`` the
    dropout multipliers; ``parts`` consecutive slices covering 0..B-1; ``run(fn,
    parts)`` returns ``[fn(part) for part in parts]``, on threads or here.
    """
    T, B = inputs.shape[:2]
    shape = (T, B, params["V"].shape[0])
    weights = loss_weights(
        mask, shape, head=head, reduction=reduction, dtype=params["W"].dtype, xp=xp
    )  # a float, or (T, B): those of the whole batch

    def part_step(rows: slice) -> tuple[Any, dict[str, Any], Any]:  # the one-block step
        keep_p = None if keep is None else keep[:, rows, ...]  # (T, b, D)
        h0_p = None if h0 is None else h0[rows, ...]  # (b, D)
        _, logits, cache = model.forward(params, inputs[:, rows, ...], h0_p, xp, keep_p)
        terms, dlogits = HEADS[head](logits, targets[:, rows, ...], xp)  # (T, b), (T, b, C)
        w = weights if isinstance(weights, float) else weights[:, rows]
        loss, dlogits = reduce(terms, dlogits, w, xp)
        return loss, model.backward(params, dlogits, cache, xp), cache.states[-1, ...]

    results = run(part_step, parts)
    loss, grads, _ = results[0]  # fresh arrays of this call: summed into in place
    for part_loss, part_grads, _ in results[1:]:  # part order, whoever ran the parts
        loss = loss + part_loss
        for key in grads:
            grads[key] += part_grads[key]
    h_last = xp.concat([h for _, _, h in results], axis=0)  # (B, D)
    return loss, grads, h_last
