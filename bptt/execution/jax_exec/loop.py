"""The loop of a recurrence on JAX: ``jax.lax.scan`` under a trace, Python's otherwise
(see :mod:`bptt.execution.jax_exec`), and ``jax.jit`` made once per function."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ...math.scan import python_scan

__all__ = ["is_traced", "jit", "scan"]


def _leaves(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [] if tree is None else [tree]


def is_traced(tree: Any) -> bool:
    """Is any array of ``tree`` (nested tuples of arrays) a JAX tracer?"""
    import jax

    return any(isinstance(a, jax.core.Tracer) for a in _leaves(tree))


def scan(
    body: Callable[[Any, tuple[Any, ...]], tuple[Any, tuple[Any, ...]]],
    carry: Any,
    xs: tuple[Any, ...],
    xp: Any,
    *,
    reverse: bool = False,
    length: int | None = None,
) -> tuple[Any, tuple[Any, ...]]:
    """``jax.lax.scan(body, carry, xs, reverse=, length=)`` under a trace, the Python
    loop on concrete arrays; the contract of :func:`bptt.math.scan.python_scan`."""
    if not is_traced((carry, xs)):
        return python_scan(body, carry, xs, xp, reverse=reverse, length=length)
    import jax

    carry, ys = jax.lax.scan(body, carry, tuple(xs), length=length, reverse=reverse)
    return carry, tuple(ys)


@functools.cache
def jit(fn: Callable[..., Any], static_argnames: tuple[str, ...] = ()) -> Callable[..., Any]:
    """``jax.jit(fn, static_argnames=...)``, made once per function: its compiled
    programs (one per shape) serve every later call, e.g. every validation of a run."""
    import jax

    return jax.jit(fn, static_argnames=static_argnames)
