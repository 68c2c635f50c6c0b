"""Choosing a backend: by name, from the environment, or from an existing array."""

from __future__ import annotations

import os
from typing import Any

from ._arrays import device_of, library_name
from ._backend import Backend, BackendError
from ._loaders import LOADERS
from ._probe import NAMES, cupy_status

ENV_VAR = "BPTT_BACKEND"
"""The environment variable naming the backend when no ``backend=`` is given."""


def resolve_name(name: str | None = None) -> str:
    """Explicit name, else ``$BPTT_BACKEND``, else ``"numpy"``; ``"auto"`` picks a GPU.

    ``"auto"`` is CuPy when a CUDA GPU runs a kernel here, else NumPy. It never
    picks torch CUDA or JAX on a GPU, by design: bptt's GPU path is written and
    checked for CuPy; torch and JAX are chosen by name (``backend="torch",
    device="cuda"``; ``backend="jax", device="gpu"``), so an installed framework
    never changes what ``auto`` means.
    """
    if name is None:
        name = os.environ.get(ENV_VAR) or "numpy"
    name = name.strip().lower()
    if name == "auto":
        return "cupy" if cupy_status().usable else "numpy"
    if name not in LOADERS:
        raise BackendError(f"backend: expected one of {[*NAMES, 'auto']}; got {name!r}")
    return name


def get_backend(name: str | None = None, device: Any = None) -> Backend:
    """The backend called ``name`` (see :func:`resolve_name`) on ``device``."""
    return LOADERS[resolve_name(name)](device)


def backend_of(x: Any) -> Backend:
    """The backend and device an existing array lives on.

    A JAX tracer has no device: its backend has JAX's default device.
    """
    library = library_name(x)
    if library == "numpy":
        return get_backend("numpy")
    if library in ("cupy", "torch", "array_api_strict", "jax"):
        return LOADERS[library](device_of(x))
    raise BackendError(f"not an array of a known backend: {type(x).__module__}.{type(x).__name__}")
