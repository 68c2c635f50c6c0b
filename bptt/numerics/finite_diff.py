"""Finite-difference checks of the BPTT gradients (behind :func:`bptt.gradcheck`).

A check, not a training path: it reads values to the host freely. Perturbed
parameters are built without item assignment (``where`` with a one-entry mask),
so it runs on immutable arrays (JAX) as on the others.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..math import step
from ..math.heads import loss_weights

__all__ = ["finite_difference_check"]


def _entries(size: int, max_entries: int | None, rng: np.random.Generator) -> list[int]:
    if max_entries is not None and max_entries < size:
        return sorted(rng.choice(size, size=max_entries, replace=False).tolist())
    return list(range(size))


def finite_difference_check(
    params: Any,
    inputs: Any,
    targets: Any,
    *,
    xp: Any,
    h0: Any,
    head: str,
    mask: Any,
    reduction: str,
    dropout_mask: Any,
    eps: float,
    max_entries: int | None,
    seed: int,
    cell: str = "tanh",
    layer_masks: Any = None,
) -> float:
    """The worst relative error of :func:`bptt.gradcheck` (arguments checked there)."""
    real = isinstance(eps, (int, float)) and not isinstance(eps, bool)
    if not (real and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a positive finite step; got {eps!r}")
    whole = isinstance(max_entries, (int, np.integer)) and not isinstance(max_entries, bool)
    if max_entries is not None and not (whole and max_entries >= 1):
        raise ValueError(f"max_entries: expected a positive integer or None; got {max_entries!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0; got {seed!r}")
    device = params["U"].device
    info = getattr(xp, "__array_namespace_info__", None)
    if info is not None and "float64" not in info().dtypes(device=device):
        raise ValueError(f"gradcheck needs float64, which device {device!r} does not support")
    f64 = xp.float64
    p64 = {k: xp.astype(v, f64) for k, v in params.items()}

    def cast(a: Any) -> Any:  # an array, a state's parts (LSTM's (h0, c0)), or None
        if isinstance(a, tuple):
            return tuple(xp.astype(part, f64) for part in a)
        return None if a is None else xp.astype(a, f64)

    as64 = {"h0": cast(h0), "dropout_mask": cast(dropout_mask)}
    x64 = inputs if inputs.ndim == 2 else xp.astype(inputs, f64)
    masks64 = None if layer_masks is None else [xp.astype(m, f64) for m in layer_masks]
    T, B = inputs.shape[:2]
    C = params["V"].shape[0]
    weights = loss_weights(mask, (T, B, C), head=head, reduction=reduction, dtype=f64, xp=xp)
    kw = dict(head=head, weights=weights, xp=xp, cell=cell,
              layer_masks=masks64, **as64)  # fmt: skip

    def loss_at(p: dict[str, Any]) -> float:
        return float(step.loss(p, x64, targets, **kw))

    loss, analytic, _ = step.loss_and_grad(p64, x64, targets, **kw)
    if not math.isfinite(float(loss)):
        raise FloatingPointError(f"gradcheck: the loss is {float(loss)}; nothing to check")
    rng = np.random.default_rng(seed)
    found = {}  # key -> (analytic, numeric), host float64
    for key, value in p64.items():
        size = math.prod(value.shape)
        flat = xp.reshape(value, (size,))
        index = xp.arange(size, device=device)
        a_host = np.asarray(_to_host(xp.reshape(analytic[key], (size,))), dtype=np.float64)
        entries = _entries(size, max_entries, rng)
        numeric = []
        for i in entries:
            v = float(flat[i])
            f = {}
            for k in (-2, -1, 1, 2):
                moved = xp.asarray(v + k * eps, dtype=f64, device=device)
                pert = xp.where(index == i, moved, flat)
                f[k] = loss_at({**p64, key: xp.reshape(pert, value.shape)})
            # five-point central difference, error O(eps^4); differences first, so
            # that a loss that does not move gives exactly 0
            numeric.append((8 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12 * eps))
        found[key] = (a_host[entries], np.asarray(numeric))
    return _worst_relative_error(found)


def _to_host(x: Any) -> Any:
    """A host copy for the comparison: every value, one transfer per parameter."""
    from .. import backends

    return backends.backend_of(x).to_numpy(x)


def _worst_relative_error(found: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """max over parameters of the inf-norm error relative to max(|a|, |n|, 1e-6 G).

    Never passes on what it did not see: a NaN or infinity in either gradient, or no
    entry compared at all, raises (Python's ``max`` would drop a NaN and an empty
    comparison would read as a perfect 0.0)."""
    if sum(a.size for a, _ in found.values()) == 0:
        raise ValueError("gradcheck: no gradient entry was compared; nothing was checked")
    for key, (ana, num) in found.items():
        if not np.all(np.isfinite(ana)):
            raise FloatingPointError(
                f"gradcheck: params[{key!r}]: the BPTT gradient is NaN or infinite"
            )
        if not np.all(np.isfinite(num)):
            raise FloatingPointError(
                f"gradcheck: params[{key!r}]: the finite differences are NaN or infinite "
                "(the loss is not finite a step away: try a smaller eps)"
            )
    largest = max(float(np.max(np.abs(a), initial=0.0)) for a, _ in found.values())
    worst = 0.0
    for ana, num in found.values():
        scale = max(np.max(np.abs(ana), initial=0.0), np.max(np.abs(num), initial=0.0))
        scale = max(scale, 1e-6 * largest)  # a parameter with ~0 gradient: judged at that level
        if scale > 0:  # else both are exactly 0 everywhere: they agree
            worst = max(worst, float(np.max(np.abs(ana - num), initial=0.0) / scale))
    if not math.isfinite(worst):
        raise FloatingPointError(f"gradcheck: the worst relative error is {worst}")
    return worst
