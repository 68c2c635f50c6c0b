"""Parameter initialisation: seeded on the host, then moved to the chosen backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backends

__all__ = ["INITS", "draw", "dtype_name"]

INITS = ("uniform", "xavier", "orthogonal", "identity")
IRNN_STD = 1e-3  # Le et al. 2015: every other matrix from N(0, 0.001^2)
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


def draw(
    model: Any, *, seed: int = 0, dtype: Any = "float32", backend: str | None = None,
    device: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """New parameters for ``model`` (:meth:`bptt.RNN.init`), in its layout's order.

    Values are drawn in float64 from ``numpy.random.default_rng(seed)``, matrices first
    in the layout's order, then cast and moved with one ``asarray`` each, so one seed
    gives the same parameters on every backend (float32 differs from float64 only by
    rounding). ``model.initializer``: ``"uniform"`` draws every matrix from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)); ``"xavier"`` from U(-a, a) with
    a = sqrt(6 / (fan_in + fan_out)); ``"orthogonal"`` makes each W ``init_scale``
    times a random orthogonal matrix (per gate block) and the rest as ``"uniform"``;
    ``"identity"`` (IRNN, Le et al. 2015) makes each W ``init_scale`` times the identity
    (per gate block) and every other matrix N(0, 0.001^2). Biases start at 0.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0; got {seed!r}")
    dtype = dtype_name(dtype)
    be = backends.get_backend(backend, device)
    be.require_dtype(dtype)  # names the fix: float32, or JAX's x64 switch
    rng = np.random.default_rng(seed)
    host: dict[str, np.ndarray] = {}
    for key, shape in model.param_shapes().items():  # matrices first, in the layout's order
        fan_out, fan_in = shape if len(shape) == 2 else (shape[0], 0)
        if len(shape) == 1:
            host[key] = np.zeros(fan_out)
        elif model.initializer == "xavier":
            host[key] = _uniform(rng, (fan_out, fan_in), np.sqrt(6.0 / (fan_in + fan_out)))
        elif model.initializer == "orthogonal" and key[0] == "W":
            blocks = [_orthogonal(rng, fan_in) for _ in range(fan_out // fan_in)]
            host[key] = model.init_scale * np.concatenate(blocks)  # (G D, D)
        elif model.initializer == "identity" and key[0] == "W":
            host[key] = model.init_scale * np.tile(np.eye(fan_in), (fan_out // fan_in, 1))
        elif model.initializer == "identity":
            host[key] = rng.normal(0.0, IRNN_STD, size=(fan_out, fan_in))
        else:
            host[key] = _uniform(rng, (fan_out, fan_in), 1.0 / np.sqrt(fan_in))
    return {key: be.asarray(value.astype(dtype), dtype=dtype) for key, value in host.items()}
