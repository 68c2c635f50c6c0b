"""A model's forward pass, loss and gradients, and gradient check (what
:meth:`bptt.RNN.forward`, :meth:`bptt.RNN.loss_and_grad` and :meth:`bptt.RNN.gradcheck`
run; :mod:`bptt.api.functional` keeps the older calls on a bare parameter dict).

Each takes the model first, finds the namespace and device once, from the arrays it
is given, checks its arguments, and returns arrays of the same library, on the same device; the work
runs with that device current (CuPy launches on the current device).
"""

from __future__ import annotations

from typing import Any

from ..backends import device_context
from ..execution import schedules
from ..math import layers
from ..math import remat as _remat
from ..math.heads import loss_weights
from ..numerics.finite_diff import finite_difference_check
from .checks import as_index, check_call
from .checks import check_values as _check_values

__all__ = ["forward", "gradcheck", "loss_and_grad"]


def forward(
    model: Any,
    params: Any,
    inputs: Any,
    *,
    h0: Any = None,
    check_values: bool = True,
    return_state: bool = False,
    schedule: str | None = None,
) -> tuple[Any, ...]:
    """Run the RNN over ``inputs``: states (T, B, D) and logits (T, B, C). Eqs. (19)-(21).

    ``inputs``: token ids (T, B), integer, or dense vectors (T, B, M) of the
    parameters' dtype. ``h0`` (B, D) is the state before step 1 (zeros if None).
    For a stack (``layers`` > 1 or ``bidirectional``) the states are the last
    layer's, (T, B, K D) with K directions, and ``h0`` is (L K, B, D), one state per
    cell as torch's ``h_0``. ``return_state=True`` returns ``(states, logits, h_last)``, with
    ``h_last`` shaped as ``h0`` (every layer's last state: what a stack carries to the
    next chunk). ``check_values=False`` skips the value checks, the call's one device
    sync. ``schedule``: only the loop matters here (:mod:`bptt.execution.schedules`): on JAX
    ``"auto"`` runs each recurrence as one ``lax.scan`` under ``jax.jit``,
    ``"unrolled"`` as a Python loop; ``"scan"`` elsewhere raises.
    """
    xp, dims = check_call(model, params, inputs, h0=h0)
    recurrences = schedules.forward_recurrences(xp, schedule)
    inputs = as_index(inputs, xp)  # ids of any integer dtype
    with device_context(params["U"]):
        if check_values:
            _check_values(params, inputs, h0=h0, dims=dims, xp=xp)
        out, _ = layers.forward(params, inputs, h0, xp, cell=model.cell, recurrences=recurrences)
    return tuple(out) if return_state else (out.states, out.logits)


def loss_and_grad(
    model: Any,
    params: Any,
    inputs: Any,
    targets: Any,
    *,
    h0: Any = None,
    mask: Any = None,
    reduction: str = "mean",
    dropout_mask: Any = None,
    check_values: bool = True,
    schedule: str | None = None,
    layer_masks: Any = None,
    remat: Any = None,
) -> tuple[Any, dict[str, Any], Any]:
    """Loss, gradients of every parameter, and the last state, by BPTT.

    Returns ``(loss, grads, h_last)``: ``loss`` a 0-d array (never a Python float,
    which would force a GPU sync), ``grads`` a dict with the keys, dtype and device
    of ``params``, ``h_last`` (B, D) the state after step T (carry it as the next
    chunk's ``h0``; ``h0`` itself gets no gradient).

    The model's ``head``: ``"softmax"`` (integer targets (T, B)), ``"sigmoid"`` (0/1 targets
    (T, B, C), or (T, B) when C == 1) or ``"mse"`` (a linear output and the squared
    error against real targets (T, B, C), or (T, B) when C == 1). ``mask`` (T, B),
    boolean or 0/1: masked steps add no loss and no gradient. ``reduction``:
    ``"mean"`` over the unmasked steps (and over C for sigmoid and mse), as torch's
    CrossEntropyLoss / BCEWithLogitsLoss / MSELoss, or ``"sum"``. ``dropout_mask``
    (T, B, D), optional: multipliers (0 or 1/(1-p)) on the states before V
    (:func:`bptt.numerics.random.dropout_mask` draws them on the device).

    A stack (:mod:`bptt.math.layers`: ``num_layers`` L, K directions) takes ``h0`` and
    returns ``h_last`` as (L K, B, D), its ``dropout_mask`` is (T, B, K D), and
    ``layer_masks`` holds L - 1 more (T, B, K D), each multiplying a layer's output on
    its way into the next (dropout between layers). Any other loss: :meth:`bptt.RNN.vjp`.
    ``check_values=False`` skips the value checks, the call's one device sync.
    ``schedule``: how the step runs (:mod:`bptt.execution.schedules`): ``"auto"`` (the
    default, or ``$BPTT_SCHEDULE``), ``"single"``, or the NumPy-only ``"overlap"``
    and ``"split"``; all give the same result to rounding.
    ``remat``: store only some states and recompute the rest in the backward pass
    (:mod:`bptt.math.remat`): None (store all), an integer k, ``"sqrt"`` or ``"budget:m"``;
    the same gradients (to rounding; the states and dL/dh0 bit for bit on NumPy).
    """
    xp, dims = check_call(
        model, params, inputs, targets=targets, h0=h0, mask=mask, reduction=reduction,
        dropout_mask=dropout_mask, need_targets=True, layer_masks=layer_masks,
    )  # fmt: skip
    inputs, targets, mask = (as_index(a, xp) for a in (inputs, targets, mask))
    remat = _remat.check(remat, dims.arch.directions)
    head, T, B = model.head, *inputs.shape[:2]
    itemsize = _itemsize(dims.dtype, xp)
    _, run = schedules.runner(schedule, xp, T, B, dims.D, itemsize, single=model.single_vanilla,
                              remat=remat)  # fmt: skip
    with device_context(params["U"]):
        if check_values:
            _check_values(
                params, inputs, targets=targets, h0=h0, mask=mask, head=head, dims=dims, xp=xp,
                dropout_mask=dropout_mask, layer_masks=layer_masks,
            )  # fmt: skip
        weights = loss_weights(
            mask, (T, B, dims.C), head=head, reduction=reduction, dtype=dims.dtype, xp=xp
        )  # a float, or (T, B)
        return run(
            params, inputs, targets, h0=h0, head=head, weights=weights,
            dropout_mask=dropout_mask, xp=xp, cell=model.cell, layer_masks=layer_masks,
        )  # fmt: skip


def _itemsize(dtype: Any, xp: Any) -> int:
    return xp.finfo(dtype).bits // 8


def gradcheck(
    model: Any,
    params: Any,
    inputs: Any,
    targets: Any,
    *,
    h0: Any = None,
    mask: Any = None,
    reduction: str = "mean",
    dropout_mask: Any = None,
    eps: float = 1e-3,
    max_entries: int | None = None,
    seed: int = 0,
    layer_masks: Any = None,
) -> float:
    """Worst relative error between BPTT gradients and float64 central differences.

    Everything is cast to float64 on the arrays' own device (a device without
    float64 is refused). For each parameter the error is
    ``max |analytic - numeric| / max(max |analytic|, max |numeric|, 1e-6 G)``, the
    inf-norm error relative to that parameter's largest gradient entry, where G is
    the largest analytic entry of all parameters (so that a parameter whose gradient
    is ~0 is not judged against its own rounding noise); the result is the worst
    over parameters. Every entry is perturbed (a five-point stencil with step
    ``eps``: 4 forward passes each, error O(eps^4)) unless ``max_entries`` limits it
    to that many random entries per parameter, drawn with ``seed``. A NaN anywhere
    (loss, gradient, ``eps``) or a check of no entry raises ``FloatingPointError``
    or ``ValueError``: a check never passes on what it did not see. Stacks and
    ``layer_masks`` as in :func:`loss_and_grad`; with a relu cell take a
    small ``eps`` (1e-5): a step of 1e-3 often moves some z_t across relu's kink at 0,
    where the difference quotient is not the derivative.
    """
    xp, dims = check_call(
        model, params, inputs, targets=targets, h0=h0, mask=mask, reduction=reduction,
        dropout_mask=dropout_mask, need_targets=True, layer_masks=layer_masks,
    )  # fmt: skip
    head = model.head
    inputs, targets, mask = (as_index(a, xp) for a in (inputs, targets, mask))
    with device_context(params["U"]):
        _check_values(
            params, inputs, targets=targets, h0=h0, mask=mask, head=head, dims=dims, xp=xp,
            dropout_mask=dropout_mask, layer_masks=layer_masks,
        )  # fmt: skip
        return finite_difference_check(
            params, inputs, targets, xp=xp, h0=h0, head=head, mask=mask,
            reduction=reduction, dropout_mask=dropout_mask, eps=eps,
            max_entries=max_entries, seed=seed, cell=model.cell, layer_masks=layer_masks,
        )  # fmt: skip
