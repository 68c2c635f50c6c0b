"""Parameter initialisation: seeded on the host, then moved to the chosen backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backends
from .layers import Arch, param_names, suffix

__all__ = ["INITS", "dtype_name", "init_params"]

INITS = ("uniform", "xavier", "orthogonal")
FLOAT_DTYPES = ("float32", "float64")


def dtype_name(dtype: Any) -> str:
    """'float32' for "float32", np.float32, torch.float32, xp.float32, ..."""
    name = dtype if isinstance(dtype, str) else str(dtype)
    name = name.rsplit(".", 1)[-1].removeprefix("<class '").removesuffix("'>")
    if name not in FLOAT_DTYPES:
        raise ValueError(f"dtype: expected one of {list(FLOAT_DTYPES)}; got {dtype!r}")
    return name


def _uniform(rng: np.random.Generator, shape: tuple[int, int], bound: float) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape)


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))  # sign fix makes the draw uniform over O(n)


def init_params(
    input_size: int,
    hidden_size: int,
    output_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    bias: bool = True,
    dtype: Any = "float32",
    seed: int = 0,
    init: str = "uniform",
    backend: str | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """New parameters ``{"U": (D, M), "W": (D, D), "V": (C, D)[, "b": (D,), "c": (C,)]}``.

    M = ``input_size``, D = ``hidden_size``, C = ``output_size``, as in eqs. (24)-(29).
    ``num_layers`` L > 1 or ``bidirectional`` make a stack with the keys and shapes of
    :func:`bptt.layers.param_names` (``U_l1`` (D, K D), ``W_l0_reverse``, ...; V
    (C, K D) for K directions), drawn in that order.
    Values are drawn in float64 from ``numpy.random.default_rng(seed)`` and then
    cast and moved with ``xp.asarray(..., device=...)``, so one seed gives the same
    parameters on every backend (float32 differs from float64 only by rounding).

    ``init``: ``"uniform"`` draws every matrix from U(-1/sqrt(fan_in), 1/sqrt(fan_in));
    ``"xavier"`` from U(-a, a) with a = sqrt(6 / (fan_in + fan_out)); ``"orthogonal"``
    makes W a random orthogonal matrix and U, V as ``"uniform"``. Biases start at 0.
    ``backend``/``device`` as in :func:`bptt.backends.get_backend`.
    """
    for name, size in (
        ("input_size", input_size),
        ("hidden_size", hidden_size),
        ("output_size", output_size),
        ("num_layers", num_layers),
    ):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{name}: expected a positive integer; got {size!r}")
    if not isinstance(bidirectional, bool):
        raise ValueError(f"bidirectional: expected True or False; got {bidirectional!r}")
    if init not in INITS:
        raise ValueError(f"init: expected one of {list(INITS)}; got {init!r}")
    dtype = dtype_name(dtype)
    be = backends.get_backend(backend, device)
    be.require_dtype(dtype)  # names the fix: float32, or JAX's x64 switch

    M, D, C = int(input_size), int(hidden_size), int(output_size)
    arch = Arch(int(num_layers), 2 if bidirectional else 1)
    shapes = _shapes(arch, M, D, C)
    rng = np.random.default_rng(seed)
    host: dict[str, np.ndarray] = {}
    for key in param_names(arch, bias=bias):  # matrices first, in the layout's order
        fan_out, fan_in = shapes[key] if len(shapes[key]) == 2 else (shapes[key][0], 0)
        if key[0] in "bc":
            host[key] = np.zeros(fan_out)
        elif init == "xavier":
            host[key] = _uniform(rng, (fan_out, fan_in), np.sqrt(6.0 / (fan_in + fan_out)))
        elif init == "orthogonal" and key[0] == "W":
            host[key] = _orthogonal(rng, D)
        else:
            host[key] = _uniform(rng, (fan_out, fan_in), 1.0 / np.sqrt(fan_in))
    return {key: be.asarray(value.astype(dtype), dtype=dtype) for key, value in host.items()}


def _shapes(arch: Arch, M: int, D: int, C: int) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape (eqs. 27-29 for each cell; layer l > 0 reads K D units)."""
    width = arch.directions * D
    shapes: dict[str, tuple[int, ...]] = {"V": (C, width), "c": (C,)}
    for layer, direction in arch.cells():
        s = suffix(layer, direction)
        shapes.update({f"U{s}": (D, M if layer == 0 else width), f"W{s}": (D, D), f"b{s}": (D,)})
    return shapes
