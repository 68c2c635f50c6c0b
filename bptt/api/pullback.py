"""``bptt.vjp``: the forward pass and its pullback, in the manner of ``jax.vjp``.

>>> outputs, pullback = model.vjp(params, inputs)         # doctest: +SKIP
>>> dlogits = my_loss_gradient(outputs.logits)            # any loss, (T, B, C)
>>> grads, d_inputs, d_h0 = pullback(dlogits, with_inputs=True, with_h0=True)

``outputs`` holds the last layer's states (T, B, K D), the logits (T, B, C) and the
last state of every cell (``h_last``); ``pullback(dlogits, dstates)`` is the
vector-Jacobian product of the whole network (:func:`bptt.math.layers.backward`): the
gradients of every parameter for the cotangent ``dlogits`` of the logits (a
user-written loss) and ``dstates`` of the states (a user-written head), and on
request those of the dense inputs (eq. B22) and of h0 (eq. B23).
:func:`bptt.loss_and_grad` is the same forward pass and pullback with one of the
built-in heads in between.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ..backends import device_context
from ..execution import schedules
from ..math import layers
from ..math import remat as _remat
from ..math.layers import Forward
from .checks import as_index, check_call, check_cotangents
from .checks import check_values as _check_values

__all__ = ["Cotangents", "Forward", "vjp"]


class Cotangents(NamedTuple):
    """What a pullback returns: the parameter gradients and, when asked, the inputs'
    and h0's (None otherwise)."""

    params: dict[str, Any]  # keyed, shaped and ordered as params
    inputs: Any  # (T, B, M), or None
    h0: Any  # shaped as h0: (B, D) or (L K, B, D), or None


def vjp(
    model: Any,
    params: Any,
    inputs: Any,
    *,
    h0: Any = None,
    dropout_mask: Any = None,
    layer_masks: Any = None,
    check_values: bool = True,
    remat: Any = None,
) -> tuple[Forward, Callable[..., Cotangents]]:
    """The forward pass and its pullback: ``(outputs, pullback)``.

    Arguments as in :func:`bptt.loss_and_grad` (no targets: the loss is yours).
    ``outputs`` is ``Forward(states, logits, h_last)``: states (T, B, K D) of the last
    layer (what V reads, before ``dropout_mask``), logits (T, B, C), and ``h_last``
    shaped as ``h0``.

    ``pullback(dlogits=None, dstates=None, *, with_inputs=False, with_h0=False)``
    returns ``Cotangents(params, inputs, h0)``: the gradients of every parameter of
    sum(dlogits * logits) + sum(dstates * states), i.e. of your loss when these are
    its gradients; ``inputs`` (T, B, M) when ``with_inputs`` (dense inputs only: token
    ids have no gradient) and ``h0`` when ``with_h0`` (also when h0 was None: the
    gradient at the zero state). Cotangents must have the parameters' dtype, library
    and device. It can be called any number of times; it makes one device read per
    call for the value check when ``check_values`` (finite cotangents), as the
    forward pass does for its inputs.

    ``remat`` (:mod:`bptt.math.remat`): the pullback keeps no cache but the arguments and
    replays the forward pass from h0 under that plan (None: the cache of every step).
    """
    xp, dims = check_call(
        model, params, inputs, h0=h0, dropout_mask=dropout_mask, layer_masks=layer_masks
    )
    inputs = as_index(inputs, xp)  # ids of any integer dtype
    remat = _remat.check(remat, dims.arch.directions)
    T, B = inputs.shape[:2]
    recurrences, blas = schedules.execution(xp, B, dims.D)
    with device_context(params["U"]), blas():
        if check_values:
            _check_values(params, inputs, h0=h0, dims=dims, xp=xp, dropout_mask=dropout_mask,
                          layer_masks=layer_masks)  # fmt: skip
        outputs, cache = layers.forward(
            params, inputs, h0, xp, cell=model.cell, dropout_mask=dropout_mask,
            layer_masks=layer_masks, recurrences=recurrences,
        )  # fmt: skip
    if remat is not None:
        cache = None  # let every step's cache go: the pullback replays
    dense = inputs.ndim == 3

    def pullback(
        dlogits: Any = None, dstates: Any = None, *, with_inputs: bool = False,
        with_h0: bool = False,
    ) -> Cotangents:  # fmt: skip
        check_cotangents(params, dims, (T, B), dlogits=dlogits, dstates=dstates)
        if with_inputs and not dense:
            raise ValueError(
                "with_inputs: the inputs are token ids (T, B), which have no gradient; "
                "pass dense inputs (T, B, M) (an embedding's output) to get dL/dinputs"
            )
        with device_context(params["U"]), blas():
            if check_values:
                _check_finite({"dlogits": dlogits, "dstates": dstates}, xp)
            if remat is not None:
                grads, d_inputs, d_h0 = _remat.pullback(
                    params, inputs, h0, xp, dlogits, dstates, remat=remat, cell=model.cell,
                    dropout_mask=dropout_mask, layer_masks=layer_masks,
                    recurrences=recurrences, want_inputs=with_inputs, want_h0=with_h0,
                )  # fmt: skip
            else:
                grads, d_inputs, d_h0 = layers.backward(
                    params, cache, dlogits, dstates, xp, want_inputs=with_inputs,
                    want_h0=with_h0, recurrences=recurrences,
                )  # fmt: skip
        return Cotangents(grads, d_inputs, d_h0)

    return outputs, pullback


def _check_finite(named: dict[str, Any], xp: Any) -> None:
    """One device read: are the given cotangents finite? Else name the first that is not."""
    given = {name: a for name, a in named.items() if a is not None}
    flags = [xp.all(xp.isfinite(a)) for a in given.values()]
    if bool(xp.all(xp.stack(flags))):
        return
    for name, flag in zip(given, flags, strict=True):
        if not bool(flag):
            raise ValueError(f"{name}: contains NaN or infinite values")
