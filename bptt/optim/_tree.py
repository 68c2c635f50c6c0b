"""Parameter trees: a mapping of named arrays, or one array (a flat parameter vector).

The transforms of :mod:`bptt.optim` act leaf by leaf, so an update costs a fixed
number of array operations per leaf: one flat vector makes it a fixed number in all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..backends import device_context, namespace_of

__all__ = ["check_like", "check_shapes", "device_scalar", "namespace", "tree_map", "zeros_like"]

Tree = Any  # Mapping[str, array] or one array


def tree_map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    """``fn`` applied leaf by leaf to trees of the same structure."""
    if isinstance(tree, Mapping):
        return {k: fn(v, *(r[k] for r in rest)) for k, v in tree.items()}
    return fn(tree, *rest)


def _first_leaf(tree: Tree) -> Any:
    return next(iter(tree.values())) if isinstance(tree, Mapping) else tree


def namespace(tree: Tree, name: str = "params") -> Any:
    """The one array namespace of every leaf (names the offending leaf otherwise)."""
    if isinstance(tree, Mapping):
        return namespace_of({f"{name}[{k!r}]": v for k, v in tree.items()})[0]
    return namespace_of({name: tree})[0]


def zeros_like(tree: Tree) -> Tree:
    """Zeros of each leaf's shape, dtype and device (made in that device's context)."""
    xp = namespace(tree)
    with device_context(_first_leaf(tree)):
        return tree_map(xp.zeros_like, tree)


def device_scalar(tree: Tree, value: float = 0.0) -> Any:
    """A 0-d counter or scalar on the tree's device: float64 where the device has it.

    Step counts and scheduled rates live on the device so that an update never
    bakes a Python number that changes from step to step (capture-ready).
    """
    xp, leaf = namespace(tree), _first_leaf(tree)
    info = getattr(xp, "__array_namespace_info__", None)
    dtype = xp.float64
    if info is not None and "float64" not in info().dtypes(device=leaf.device):
        dtype = xp.float32
    with device_context(leaf):
        return xp.full((), value, dtype=dtype, device=leaf.device)


def check_shapes(updates: Tree, like: Tree, what: str = "params") -> list[tuple[str, Any, Any]]:
    """Refuse updates whose structure or shapes differ from ``like`` (the parameters, or
    a state laid out like them), so that nothing is broadcast into them: shapes only,
    no device data read. Returns the (name, update, like) leaf pairs."""
    if isinstance(like, Mapping) != isinstance(updates, Mapping):
        raise ValueError(f"grads: expected the same structure as {what} (a mapping or one array)")
    if isinstance(like, Mapping):
        if list(updates) != list(like):
            raise ValueError(f"grads: keys {list(updates)} differ from {what}' {list(like)}")
        pairs = [(f"grads[{k!r}]", updates[k], like[k]) for k in like]
    else:
        pairs = [("grads", updates, like)]
    for name, u, p in pairs:
        if tuple(u.shape) != tuple(p.shape):
            raise ValueError(
                f"{name}: shape {tuple(u.shape)} differs from {what}' {tuple(p.shape)}"
            )
    return pairs


def check_like(updates: Tree, params: Tree) -> None:
    """Refuse updates whose structure, shapes or dtypes differ from the parameters'."""
    for name, u, p in check_shapes(updates, params):
        if u.dtype != p.dtype:
            raise TypeError(f"{name}: dtype {u.dtype} differs from params' {p.dtype}")
