"""Dtype availability: which 64-bit dtypes a library gates behind a global switch.

JAX creates 32-bit arrays unless ``jax_enable_x64`` is on: asked for float64 or
int64 without it, JAX truncates with a warning. bptt refuses instead.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

# Libraries whose 64-bit dtypes exist only while a process-wide flag is on.
X64_GATED = frozenset({"jax"})
X64_DTYPES = frozenset({"float64", "int64", "uint64", "complex128"})
X64_HINT = "set JAX_ENABLE_X64=1 or jax.config.update('jax_enable_x64', True)"


def dtype_name(dtype: Any) -> str:
    """``"float64"`` for ``"float64"``, ``np.float64``, ``jnp.float64``, ``np.dtype("f8")``."""
    return dtype if isinstance(dtype, str) else np.dtype(dtype).name


def jax_x64_enabled() -> bool:
    """JAX's global x64 switch; False when JAX has not been imported."""
    jax = sys.modules.get("jax")
    return jax is not None and bool(jax.config.jax_enable_x64)


def gated_and_off(library: str, dtype: str) -> bool:
    """True when ``dtype`` is a 64-bit dtype that ``library`` has switched off."""
    return library in X64_GATED and dtype in X64_DTYPES and not jax_x64_enabled()


def refusal(library: str, device: Any, dtype: str, what: str) -> str:
    """The message for ``dtype`` not being available on ``library``'s ``device``."""
    if library in X64_GATED and dtype in X64_DTYPES:
        return f"{what}: {dtype} needs JAX's x64 mode: {X64_HINT}"
    advice = "; use 'float32'" if dtype.startswith("float") and dtype != "float32" else ""
    return f"{what}: {dtype} is not supported on {library} device {device!r}{advice}"
