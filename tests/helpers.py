"""Shared test helpers: random problems and a strict closeness assertion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import bptt
from bptt import backends


@dataclass
class Problem:
    """One loss_and_grad call, as host NumPy arrays (``host``) and backend arrays."""

    host: dict[str, Any]
    params: dict[str, Any]
    inputs: Any
    targets: Any
    kwargs: dict[str, Any] = field(default_factory=dict)


def make_problem(
    be: backends.Backend,
    rng: np.random.Generator,
    *,
    T: int = 5,
    B: int = 3,
    M: int = 4,
    D: int = 6,
    C: int = 3,
    dtype: str = "float64",
    head: str = "softmax",
    ids: bool = True,
    bias: bool = True,
    mask: bool = False,
    h0: bool = False,
    reduction: str = "mean",
    seed: int = 0,
    layers: int = 1,
    bidirectional: bool = False,
) -> Problem:
    params = bptt.init_params(
        M, D, C, bias=bias, dtype=dtype, seed=seed, backend=be.name, device=be.device,
        num_layers=layers, bidirectional=bidirectional,
    )  # fmt: skip
    if bias:  # nonzero biases, so that their gradients are tested on real values
        for key in ("b", "c"):
            params[key] = be.asarray(
                rng.uniform(-0.5, 0.5, params[key].shape).astype(dtype), dtype=dtype
            )
        for key in [k for k in params if k.startswith("b_")]:  # a stack's other cells
            params[key] = be.asarray(rng.uniform(-0.5, 0.5, D).astype(dtype), dtype=dtype)
    x = rng.integers(0, M, (T, B)) if ids else rng.standard_normal((T, B, M)).astype(dtype)
    if head == "softmax":
        y = rng.integers(0, C, (T, B))
    elif head == "sigmoid":
        y = (rng.random((T, B, C)) < 0.5).astype(dtype)
    else:
        y = rng.standard_normal((T, B, C)).astype(dtype)
    host: dict[str, Any] = {k: be.to_numpy(v) for k, v in params.items()}
    host.update(inputs=x, targets=y, head=head, reduction=reduction)
    kwargs: dict[str, Any] = {"head": head, "reduction": reduction}
    if mask:
        m = rng.random((T, B)) < 0.7
        m[0, 0] = True  # at least one step counts
        host["mask"] = m
        kwargs["mask"] = be.asarray(m)
    if h0:
        cells = layers * (2 if bidirectional else 1)
        h = rng.uniform(-0.9, 0.9, (B, D) if cells == 1 else (cells, B, D)).astype(dtype)
        host["h0"] = h
        kwargs["h0"] = be.asarray(h, dtype=dtype)
    return Problem(host, params, be.asarray(x), be.asarray(y), kwargs)


def assert_close(
    actual: Any, desired: Any, be: backends.Backend, *, rtol: float, atol: float = 0.0
) -> None:
    """Same library, device and dtype as the backend's arrays, same shape, close values."""
    assert backends.library_name(actual) == be.name, type(actual)
    assert actual.device == be.device, (actual.device, be.device)
    host = be.to_numpy(actual)
    desired = np.asarray(desired)
    assert host.shape == desired.shape, (host.shape, desired.shape)
    np.testing.assert_allclose(host, desired, rtol=rtol, atol=atol)


def rel_err(a: Any, b: Any) -> float:
    """Inf-norm error of ``a`` relative to the larger of the two inf-norms."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0))
    return float(np.max(np.abs(a - b), initial=0.0) / scale) if scale else 0.0


NUMPY_BACKEND = backends.get_backend("numpy")


def run_schedule(prob: Problem, schedule: str, dropout_mask: Any = None) -> Any:
    """``loss_and_grad`` on ``prob`` with the given ``schedule=``."""
    return bptt.loss_and_grad(
        prob.params, prob.inputs, prob.targets, dropout_mask=dropout_mask,
        schedule=schedule, **prob.kwargs,
    )  # fmt: skip
