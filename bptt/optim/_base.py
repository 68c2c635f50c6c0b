"""Gradient transformations: an ``init``/``update`` pair with explicit, typed state.

``state = t.init(params)``; ``updates, state = t.update(grads, state, params)``;
``params = apply_updates(params, updates)``. :func:`chain` composes them, as optax
does: each transform receives the updates of the one before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from ._tree import Tree, check_like, tree_map

__all__ = ["EmptyState", "GradientTransformation", "apply_updates", "chain", "checked", "number"]


class GradientTransformation(NamedTuple):
    """``init(params) -> state`` and ``update(updates, state, params) -> (updates, state)``."""

    init: Callable[[Tree], Any]
    update: Callable[..., tuple[Tree, Any]]


class EmptyState(NamedTuple):
    """The state of a transform that keeps none."""


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """The transforms applied in order; the state is the tuple of their states."""

    def init(params: Tree) -> tuple[Any, ...]:
        return tuple(t.init(params) for t in transforms)

    def update(updates: Tree, state: tuple[Any, ...], params: Tree = None) -> tuple[Tree, Any]:
        new_state = []
        for t, s in zip(transforms, state, strict=True):
            updates, s = t.update(updates, s, params)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def checked(t: GradientTransformation) -> GradientTransformation:
    """``t`` whose update refuses grads unlike the params (keys, shapes, dtypes)."""

    def update(updates: Tree, state: Any, params: Tree = None) -> tuple[Tree, Any]:
        if params is None:
            raise TypeError("update: params are required (update(grads, state, params))")
        check_like(updates, params)
        return t.update(updates, state, params)

    return GradientTransformation(t.init, update)


def apply_updates(params: Tree, updates: Tree) -> Tree:
    """p + u for every parameter (the updates already carry the minus sign); updates of
    another structure, shape or dtype are refused, never broadcast into the parameters."""
    check_like(updates, params)
    return tree_map(lambda p, u: p + u, params, updates)


def number(name: str, value: Any, ok: Callable[[float], bool], expected: str) -> float:
    """``value`` as a float if it is a finite real number with ``ok(value)``, else a
    ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected {expected}; got {value!r}")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name}: expected {expected}; got {value!r}")
    return float(value)
