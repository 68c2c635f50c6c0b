"""The public functions: forward, loss_and_grad, gradcheck.

Each finds the namespace and device once, from the arrays it is given, checks
its arguments, and returns arrays of the same library, on the same device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from . import _parallel, model, overlap, split
from ._array_api import current_device
from .checks import check_call
from .checks import check_values as _check_values
from .heads import HEADS, loss_weights, reduce

__all__ = ["forward", "gradcheck", "loss_and_grad"]

F = TypeVar("F", bound=Callable[..., Any])


def _on_params_device(fn: F) -> F:
    """Run ``fn`` with the parameters' device current (CuPy's ``cuda:N``)."""

    @functools.wraps(fn)
    def wrapper(params: Any, *args: Any, **kwargs: Any) -> Any:
        U = params.get("U") if isinstance(params, Mapping) else None
        with current_device(U):
            return fn(params, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@_on_params_device
def forward(
    params: Any, inputs: Any, *, h0: Any = None, check_values: bool = True
) -> tuple[Any, Any]:
    """Run the RNN over ``inputs``: states (T, B, D) and logits (T, B, C). Eqs. (19)-(21).

    ``inputs``: token ids (T, B), integer, or dense vectors (T, B, M) of the
    parameters' dtype. ``h0`` (B, D) is the state before step 1 (zeros if None).
    ``check_values=False`` skips the value checks that synchronise with the device.
    """
    xp, dims = check_call(params, inputs, h0=h0)
    if check_values:
        _check_values(params, inputs, h0=h0, dims=dims, xp=xp)
    states, logits, _ = model.forward(params, inputs, h0, xp)
    return states, logits


def loss_terms_and_dlogits(
    params: Any,
    inputs: Any,
    targets: Any,
    *,
    h0: Any,
    head: str,
    mask: Any,
    reduction: str,
    xp: Any,
    dropout_mask: Any = None,
) -> tuple[Any, Any, model.Cache]:
    """Reduced loss (0-d), dL/dg (T, B, C) and the forward cache. No checks."""
    _, logits, cache = model.forward(params, inputs, h0, xp, dropout_mask)
    terms, dlogits = HEADS[head](logits, targets, xp)  # (T, B), (T, B, C)
    weights = loss_weights(
        mask, logits.shape, head=head, reduction=reduction, dtype=logits.dtype, xp=xp
    )
    loss, dlogits = reduce(terms, dlogits, weights, xp)
    return loss, dlogits, cache


@_on_params_device
def loss_and_grad(
    params: Any,
    inputs: Any,
    targets: Any,
    *,
    h0: Any = None,
    head: str = "softmax",
    mask: Any = None,
    reduction: str = "mean",
    dropout_mask: Any = None,
    check_values: bool = True,
) -> tuple[Any, dict[str, Any], Any]:
    """Loss, gradients of every parameter, and the last state, by BPTT.

    Returns ``(loss, grads, h_last)``: ``loss`` a 0-d array (never a Python float,
    which would force a GPU sync), ``grads`` a dict with the keys, dtype and device
    of ``params``, ``h_last`` (B, D) the state after step T (carry it as the next
    chunk's ``h0``; ``h0`` itself gets no gradient).

    ``head``: ``"softmax"`` (integer targets (T, B)) or ``"sigmoid"`` (0/1 targets
    (T, B, C), or (T, B) when C == 1). ``mask`` (T, B), boolean or 0/1: masked steps
    add no loss and no gradient. ``reduction``: ``"mean"`` over the unmasked steps
    (and over C for sigmoid), as torch's CrossEntropyLoss / BCEWithLogitsLoss, or
    ``"sum"``. ``dropout_mask`` (T, B, D), optional: multipliers (0 or 1/(1-p)) on
    the states before V, drawn by the caller (see :func:`bptt.train.dropout_mask`).
    ``check_values=False`` skips the checks that synchronise.
    """
    xp, dims = check_call(
        params,
        inputs,
        targets=targets,
        h0=h0,
        mask=mask,
        head=head,
        reduction=reduction,
        dropout_mask=dropout_mask,
        need_targets=True,
    )
    if check_values:
        _check_values(
            params, inputs, targets=targets, h0=h0, mask=mask, head=head, dims=dims, xp=xp
        )
    kw = dict(h0=h0, head=head, mask=mask, reduction=reduction, xp=xp)
    T, B = inputs.shape[:2]
    D = params["W"].shape[0]
    parts = _parallel.batch_parts(xp, B, D, itemsize=xp.finfo(params["W"].dtype).bits // 8)
    if len(parts) > 1:  # each part of the batch on its own thread (bptt.split)
        with _parallel.split_runner(xp) as run:
            return split.loss_and_grad(
                params, inputs, targets, keep=dropout_mask, parts=parts, run=run, **kw
            )
    blocks = _parallel.time_blocks(xp, T, B, D)
    if len(blocks) > 1:  # the batched products beside the recurrence (bptt.overlap)
        with _parallel.overlapped(xp) as worker:
            loss, grads, cache = overlap.loss_and_grad(
                params, inputs, targets, keep=dropout_mask, blocks=blocks, worker=worker, **kw
            )
        return loss, grads, cache.states[-1, ...]
    with _parallel.small_blas(xp, B * D * D):  # once, not per pass
        loss, dlogits, cache = loss_terms_and_dlogits(
            params, inputs, targets, dropout_mask=dropout_mask, **kw
        )
        grads = model.backward(params, dlogits, cache, xp)
    return loss, grads, cache.states[-1, ...]


@_on_params_device
def gradcheck(
    params: Any,
    inputs: Any,
    targets: Any,
    *,
    h0: Any = None,
    head: str = "softmax",
    mask: Any = None,
    reduction: str = "mean",
    dropout_mask: Any = None,
    eps: float = 1e-3,
    max_entries: int | None = None,
    seed: int = 0,
) -> float:
    """Worst relative error between BPTT gradients and float64 central differences.

    Everything is cast to float64 on the arrays' own device (a device without
    float64 is refused). For each parameter the error is
    ``max |analytic - numeric| / max(max |analytic|, max |numeric|, 1e-6 G)``, the
    inf-norm error relative to that parameter's largest gradient entry, where G is
    the largest analytic entry of all parameters (so that a parameter whose gradient
    is ~0 is not judged against its own rounding noise); the result is the worst
    over parameters. Every entry is perturbed (a five-point
    stencil with step ``eps``: 4 forward passes each, error O(eps^4)) unless
    ``max_entries`` limits it to that many random entries per parameter, drawn
    with ``seed``.
    """
    xp, dims = check_call(
        params,
        inputs,
        targets=targets,
        h0=h0,
        mask=mask,
        head=head,
        reduction=reduction,
        dropout_mask=dropout_mask,
        need_targets=True,
    )
    _check_values(params, inputs, targets=targets, h0=h0, mask=mask, head=head, dims=dims, xp=xp)
    device = params["U"].device
    info = getattr(xp, "__array_namespace_info__", None)
    if info is not None and "float64" not in info().dtypes(device=device):
        raise ValueError(f"gradcheck needs float64, which device {device!r} does not support")
    f64 = xp.float64
    p64 = {k: xp.astype(v, f64) for k, v in params.items()}
    x64 = inputs if inputs.ndim == 2 else xp.astype(inputs, f64)
    h64 = None if h0 is None else xp.astype(h0, f64)
    k64 = None if dropout_mask is None else xp.astype(dropout_mask, f64)
    kw = dict(h0=h64, head=head, mask=mask, reduction=reduction, xp=xp, dropout_mask=k64)

    def loss_at(p: dict[str, Any]) -> float:
        return float(loss_terms_and_dlogits(p, x64, targets, **kw)[0])

    _, dlogits, cache = loss_terms_and_dlogits(p64, x64, targets, **kw)
    analytic = model.backward(p64, dlogits, cache, xp)
    rng = np.random.default_rng(seed)
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # analytic, numeric
    for key, value in p64.items():
        size = int(np.prod(value.shape))
        entries = range(size)
        if max_entries is not None and max_entries < size:
            entries = sorted(rng.choice(size, size=max_entries, replace=False).tolist())
        flat = xp.reshape(value, (size,))
        numeric, exact = [], []
        a_flat = xp.reshape(analytic[key], (size,))
        for i in entries:
            v = float(flat[i])
            f = {}
            for k in (-2, -1, 1, 2):
                pert = xp.asarray(flat, copy=True)
                pert[i] = v + k * eps
                f[k] = loss_at({**p64, key: xp.reshape(pert, value.shape)})
            # five-point central difference, error O(eps^4); differences first, so
            # that a loss that does not move gives exactly 0
            numeric.append((8 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12 * eps))
            exact.append(float(a_flat[i]))
        found[key] = (np.asarray(exact), np.asarray(numeric))
    largest = max(float(np.max(np.abs(a), initial=0.0)) for a, _ in found.values())
    worst = 0.0
    for ana, num in found.values():
        scale = max(np.max(np.abs(ana), initial=0.0), np.max(np.abs(num), initial=0.0))
        scale = max(scale, 1e-6 * largest)  # a parameter with ~0 gradient: judged at that level
        if scale > 0:
            worst = max(worst, float(np.max(np.abs(ana - num), initial=0.0) / scale))
    return worst
