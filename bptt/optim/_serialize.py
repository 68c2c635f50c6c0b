"""An optimizer state as named arrays and back, for checkpoints.

A state is a tree of NamedTuples, tuples and dicts with arrays at the leaves; its
arrays are named by their path: ``"1/mu/W"`` is the ``W`` entry of the ``mu`` field
of the second transform's state in a chain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["state_arrays", "state_from_arrays"]


def _children(node: Any) -> list[tuple[str, Any]] | None:
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return [(name, getattr(node, name)) for name in node._fields]
    if isinstance(node, tuple):
        return [(str(i), child) for i, child in enumerate(node)]
    if isinstance(node, Mapping):
        return [(str(k), v) for k, v in node.items()]
    return None  # a leaf


def state_arrays(state: Any, prefix: str = "") -> dict[str, Any]:
    """{path: array} for every leaf of ``state``."""
    children = _children(state)
    if children is None:
        return {prefix.rstrip("/"): state}
    out: dict[str, Any] = {}
    for name, child in children:
        out.update(state_arrays(child, f"{prefix}{name}/"))
    return out


def state_from_arrays(
    template: Any, arrays: Mapping[str, Any], convert: Callable[[str, Any, Any], Any]
) -> Any:
    """A state shaped like ``template`` whose leaf at path p is
    ``convert(p, arrays[p], template_leaf)`` (a KeyError names a missing path)."""
    return _rebuild(template, arrays, convert, "")


def _rebuild(node: Any, arrays: Mapping[str, Any], convert: Any, prefix: str) -> Any:
    children = _children(node)
    if children is None:
        path = prefix.rstrip("/")
        return convert(path, arrays[path], node)
    rebuilt = [_rebuild(child, arrays, convert, f"{prefix}{name}/") for name, child in children]
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return type(node)(*rebuilt)
    if isinstance(node, tuple):
        return tuple(rebuilt)
    return dict(zip(node.keys(), rebuilt, strict=True))
