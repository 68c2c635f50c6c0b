"""The loop of a recurrence, given to the math from outside: ``scan(body, carry, xs)``.

The math writes each recurrence as a step body and leaves the loop to its caller, so
the same body runs as a Python loop (NumPy, CuPy, torch, array_api_strict, and JAX
when unrolled) or as one ``jax.lax.scan`` (JAX: a program whose size does not grow
with T). The contract is ``lax.scan``'s, restricted to what the recurrences need:

- ``xs``: a tuple of arrays sharing a leading time axis of length n (it may be empty
  when ``length`` is given);
- ``body(carry, x_t) -> (carry, y_t)``: ``x_t`` the tuple of the arrays' rows t,
  ``y_t`` a tuple of arrays (the same shapes and dtypes at every step);
- returns ``(carry, ys)``: the last carry and ``ys``, the tuple of the ``y_t`` stacked
  on a new leading axis, in time order also when ``reverse=True`` (which runs t = n-1
  down to 0, as ``lax.scan(..., reverse=True)`` does).

A carry is any nesting of tuples of arrays. Nothing here reads a value on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Scan", "python_scan"]

Scan = Callable[..., tuple[Any, tuple[Any, ...]]]


def python_scan(
    body: Callable[[Any, tuple[Any, ...]], tuple[Any, tuple[Any, ...]]],
    carry: Any,
    xs: tuple[Any, ...],
    xp: Any,
    *,
    reverse: bool = False,
    length: int | None = None,
) -> tuple[Any, tuple[Any, ...]]:
    """The loop in Python, each ``y`` stacked once at the end (one op per output)."""
    n = length if length is not None else xs[0].shape[0]
    steps = range(n - 1, -1, -1) if reverse else range(n)
    outs: list[tuple[Any, ...]] = []
    for t in steps:
        carry, y = body(carry, tuple(x[t, ...] for x in xs))
        outs.append(y)
    if reverse:
        outs.reverse()
    if not outs:
        return carry, ()
    return carry, tuple(xp.stack([y[k] for y in outs]) for k in range(len(outs[0])))
