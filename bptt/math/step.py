"""One BPTT step, written once: forward, head, reduction and backward, no policy.

:func:`head_and_output_grads` is the part of a step that is one matrix product
over all the rows of the steps it is given (logits, head, reduction, dV, dc,
dS); :func:`loss_and_grad` is the whole step on one block of all T steps, the
``"single"`` schedule. The NumPy schedules of :mod:`bptt.execution.numpy_exec` call the
same two functions on blocks of steps or parts of the batch. Nothing here checks
arguments (:mod:`bptt.api.calls` does) or knows how it is executed.
"""

from __future__ import annotations

from typing import Any

from . import layers, model
from .heads import HEADS, reduce

__all__ = ["head_and_output_grads", "loss", "loss_and_grad"]


def head_and_output_grads(
    params: Any,
    states: Any,
    targets: Any,
    *,
    head: str,
    weights: Any,
    dropout_mask: Any,
    xp: Any,
) -> tuple[Any, dict[str, Any], Any]:
    """Eqs. (21)-(23), (44), (54), (56) on n steps: ``(loss, {"V", "c"}, dS)``.

    ``states`` (n, B, D); ``targets`` and ``dropout_mask`` those of the same steps;
    ``weights`` a float or the (n, B) rows of :func:`bptt.math.heads.loss_weights`.
    Returns the reduced loss of these steps (0-d), dV (and dc), and dS (n, B, D).
    """
    logits, out_states = model.output(params, states, dropout_mask, xp)  # (n, B, C)
    terms, dlogits = HEADS[head](logits, targets, xp)  # (n, B), (n, B, C)
    del logits  # (n, B, C), not needed again
    loss, dlogits = reduce(terms, dlogits, weights, xp)  # eq. (B8)
    grads = model.output_grads(params, dlogits, out_states, xp)  # dV, dc
    dS = model.state_grads(params, dlogits, dropout_mask, xp)  # (n, B, D)
    return loss, grads, dS


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
    recurrences: Any = model,
    cell: str = "tanh",
    layer_masks: Any = None,
) -> tuple[Any, dict[str, Any], Any]:
    """The whole step over all T steps: ``(loss, grads, h_last)``, grads keyed as params.

    ``recurrences``: where ``recurrence`` and ``reverse_recurrence`` come from,
    :mod:`bptt.math.model` or a library's version with the same contract and bits
    (:mod:`bptt.execution.numpy_exec.recurrences`, which writes each step into its result).
    ``h_last`` (B, D), or (L K, B, D) for a stack (:mod:`bptt.math.layers`).
    """
    out, cache = layers.forward(
        params, inputs, h0, xp, cell=cell, dropout_mask=dropout_mask,
        layer_masks=layer_masks, recurrences=recurrences,
    )  # fmt: skip
    _, logits, h_last = out
    del out
    terms, dlogits = HEADS[head](logits, targets, xp)  # (T, B), (T, B, C)
    del logits  # (T, B, C), not needed again
    loss, dlogits = reduce(terms, dlogits, weights, xp)  # eq. (B8)
    grads, _, _ = layers.backward(params, cache, dlogits, None, xp, recurrences=recurrences)
    return loss, grads, h_last


def loss(
    params: Any,
    inputs: Any,
    targets: Any,
    *,
    h0: Any,
    head: str,
    weights: Any,
    dropout_mask: Any,
    xp: Any,
    cell: str = "tanh",
    layer_masks: Any = None,
) -> Any:
    """The reduced loss alone (0-d): the forward pass and the head."""
    out, _ = layers.forward(params, inputs, h0, xp, cell=cell,
                            dropout_mask=dropout_mask, layer_masks=layer_masks)  # fmt: skip
    terms, dlogits = HEADS[head](out.logits, targets, xp)
    return reduce(terms, dlogits, weights, xp)[0]
