"""Finding the namespace and device of the arrays a user passed.

The only module of ``bptt`` that imports array_api_compat. Public functions call
:func:`namespace_of` once at entry and pass ``xp`` down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import array_api_compat

__all__ = ["current_device", "device_of", "is_array", "library_name", "namespace_of"]

device_of = array_api_compat.device


def is_array(x: Any) -> bool:
    return array_api_compat.is_array_api_obj(x)


def library_name(x: Any) -> str:
    """'numpy', 'cupy', 'torch', 'array_api_strict', ... for messages."""
    return type(x).__module__.split(".")[0]


def namespace_of(named: Mapping[str, Any]) -> tuple[Any, Any]:
    """The one (namespace, device) shared by every array in ``named``.

    ``named`` maps argument names (for messages) to arrays; ``None`` values are
    skipped. Raises TypeError when an argument is not an array or the arrays
    come from different libraries, ValueError when they sit on different
    devices. Nothing is ever moved between libraries or devices.
    """
    first_name, first = None, None
    for name, x in named.items():
        if x is None:
            continue
        if not is_array(x):
            raise TypeError(
                f"{name}: expected an array (NumPy, CuPy, torch, ...); got {type(x).__name__}"
            )
        if first is None:
            first_name, first = name, x
            continue
        if library_name(x) != library_name(first):
            raise TypeError(
                f"{name} is a {library_name(x)} array but {first_name} is a {library_name(first)} "
                "array; put all arrays of one call in the same library (nothing is moved silently)"
            )
        if device_of(x) != device_of(first):
            raise ValueError(
                f"{name} is on device {device_of(x)!r} but {first_name} is on "
                f"{device_of(first)!r}; move them to one device (nothing is moved silently)"
            )
    if first is None:
        raise TypeError("expected at least one array")
    return array_api_compat.array_namespace(first), device_of(first)


def current_device(x: Any) -> contextlib.AbstractContextManager[Any]:
    """Run a block with ``x``'s device current: CuPy launches kernels on the current
    device, so arrays on ``cuda:1`` are worked on inside ``with x.device``. A no-op
    for libraries whose operations follow their arrays (NumPy, torch, ...)."""
    if library_name(x) == "cupy":
        return x.device  # a cupy.cuda.Device, itself a context manager
    return contextlib.nullcontext()
