"""Arrays a user passed in: their library, namespace and device, and the device context.

Functions that take arrays call :func:`namespace_of` once at entry and pass ``xp``
and ``device`` down; nothing here ever moves data between libraries or devices.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from typing import Any

import array_api_compat

__all__ = [
    "device_context",
    "device_of",
    "is_array",
    "is_traced",
    "library_name",
    "namespace_library",
    "namespace_of",
]

# Top-level module of an array type -> the library users know it by.
_LIBRARY_OF_MODULE = {"jaxlib": "jax"}


def is_array(x: Any) -> bool:
    """True for an array of any array-API library, JAX tracers included."""
    return array_api_compat.is_array_api_obj(x)


def library_name(x: Any) -> str:
    """``'numpy'``, ``'cupy'``, ``'torch'``, ``'array_api_strict'``, ``'jax'``, ... for messages.

    Read from the type's module, so no library is imported to answer: a JAX array
    (``jaxlib``) and a JAX tracer (``jax._src...``) both give ``'jax'``.
    """
    module = type(x).__module__.split(".")[0]
    return _LIBRARY_OF_MODULE.get(module, module)


def is_traced(x: Any) -> bool:
    """True for a JAX tracer: an abstract value inside ``jax.jit``/``grad``/``vmap``."""
    if library_name(x) != "jax":
        return False
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.core.Tracer)


def device_of(x: Any) -> Any:
    """The device ``x`` lives on; ``None`` for a JAX tracer (jit decides placement)."""
    return array_api_compat.device(x)


def namespace_library(xp: Any) -> str:
    """The library behind an array namespace: ``'numpy'``, ``'torch'``, ``'cupy'``,
    ``'jax'``, ``'array_api_strict'``, or its module name for another one."""
    for library in ("numpy", "cupy", "torch", "jax", "array_api_strict"):
        if getattr(array_api_compat, f"is_{library}_namespace")(xp):
            return library
    return getattr(xp, "__name__", type(xp).__name__).split(".")[0]


def namespace_of(named: Mapping[str, Any]) -> tuple[Any, Any]:
    """The one (namespace, device) shared by every array in ``named``.

    ``named`` maps argument names (for messages) to arrays; ``None`` values are
    skipped. Raises TypeError when an argument is not an array or the arrays
    come from different libraries, ValueError when they sit on different
    devices. Nothing is ever moved between libraries or devices.

    JAX tracers (inside ``jax.jit``, ``grad``, ``vmap``) have no device: they are
    left out of the device comparison, and the device returned is ``None`` when
    any argument is traced, so new arrays go where the traced computation runs.
    """
    first_name, first = None, None
    placed_name, placed = None, None  # the first argument whose device is known
    traced = False
    for name, x in named.items():
        if x is None:
            continue
        if not is_array(x):
            raise TypeError(
                f"{name}: expected an array (NumPy, CuPy, torch, JAX, ...); got {type(x).__name__}"
            )
        if first is None:
            first_name, first = name, x
        elif library_name(x) != library_name(first):
            raise TypeError(
                f"{name} is a {library_name(x)} array but {first_name} is a {library_name(first)} "
                "array; put all arrays of one call in the same library (nothing is moved silently)"
            )
        if is_traced(x):
            traced = True
        elif placed is None:
            placed_name, placed = name, x
        elif device_of(x) != device_of(placed):
            raise ValueError(
                f"{name} is on device {device_of(x)!r} but {placed_name} is on "
                f"{device_of(placed)!r}; move them to one device (nothing is moved silently)"
            )
    if first is None:
        raise TypeError("expected at least one array")
    device = None if traced else device_of(placed)
    return array_api_compat.array_namespace(first), device


def context_for(library: str, device: Any) -> contextlib.AbstractContextManager[Any]:
    """The block in which ``library`` creates arrays and runs kernels on ``device``.

    CuPy: ``device`` itself (a ``cupy.cuda.Device``), because CuPy launches on the
    *current* GPU and array_api_compat's CuPy creation functions ignore ``device=``.
    JAX: ``jax.default_device(device)``, for work that names no device. Others
    follow their arrays' device: a no-op.
    """
    if library == "cupy":
        return device
    if library == "jax":
        jax = sys.modules.get("jax")
        if jax is not None and isinstance(device, jax.Device):
            return jax.default_device(device)
    return contextlib.nullcontext()


def device_context(x: Any) -> contextlib.AbstractContextManager[Any]:
    """Run a block with ``x``'s device current (see :func:`context_for`).

    A no-op for NumPy, torch, array_api_strict, a JAX tracer, or a JAX array
    sharded over several devices.
    """
    library = library_name(x)
    if library not in ("cupy", "jax") or is_traced(x):
        return contextlib.nullcontext()
    return context_for(library, x.device)
