"""The fastest NumPy-only training step we could write: the yardstick for the array-API path.

Not part of the library (it was ``bptt/_numpy_variant.py``). ``bench_step.py`` and
``variant.py`` time it beside ``bptt.loss_and_grad`` on NumPy, because the array-API
path must stay within 10% of it (issue 4). What it may do that the standard may
not: ``out=`` on every ufunc and matmul, buffers kept between steps,
scatter-subtraction into the softmax gradient. It does the same arithmetic (eqs.
19-21, 44, 54-56, 62, 67-73 of docs/derivation.md) as bptt's ``"single"`` schedule,
on one thread, its BLAS calls on one BLAS thread below the same work threshold
(``bptt.execution.numpy_exec.policy.MIN_BLAS_WORK``), for the softmax head, token-id inputs,
mean reduction, biases, h0 = 0 only.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from bptt.execution.numpy_exec import policy, threads

__all__ = ["clear_buffers", "loss_and_grad"]

_buffers: dict[tuple, dict[str, np.ndarray]] = {}


def clear_buffers() -> None:
    """Drop the kept buffers (the next call allocates them again)."""
    _buffers.clear()


def _workspace(T: int, B: int, D: int, C: int, M: int, dtype: Any) -> dict[str, Any]:
    key = (T, B, D, C, M, np.dtype(dtype).str)
    if key not in _buffers:
        _buffers.clear()  # one size at a time
        _buffers[key] = {
            "S": np.empty((T, B, D), dtype),  # states
            "G": np.empty((T * B, C), dtype),  # logits, then dL/dg
            "dZ": np.empty((T, B, D), dtype),  # dS, then dz
            "X": np.zeros((T * B, M), dtype),  # one-hot inputs
            "m": np.empty((T * B, 1), dtype),
            "tot": np.empty((T * B, 1), dtype),
            "z": np.empty((B, D), dtype),
            "q": np.empty((B, D), dtype),
            "rows": np.arange(T * B),
        }
    return _buffers[key]


def loss_and_grad(params: dict[str, Any], inputs: Any, targets: Any) -> tuple[Any, dict[str, Any]]:
    """Mean softmax cross-entropy (0-d) and gradients for token ids (T, B) -> (T, B)."""
    B, D = inputs.shape[1], params["W"].shape[0]
    small = B * D * D < policy.MIN_BLAS_WORK
    with threads.one_blas_thread() if small else contextlib.nullcontext():
        return _loss_and_grad(params, inputs, targets)


def _loss_and_grad(params: dict[str, Any], inputs: Any, targets: Any) -> tuple[Any, dict[str, Any]]:
    U, W, V, b, c = (params[k] for k in ("U", "W", "V", "b", "c"))
    T, B = inputs.shape
    D, M = U.shape
    C = V.shape[0]
    ws = _workspace(T, B, D, C, M, W.dtype)
    S, G, dZ, X, rows, z, q = (ws[k] for k in ("S", "G", "dZ", "X", "rows", "z", "q"))
    m, tot = ws["m"], ws["tot"]
    S2, dZ2 = S.reshape(T * B, D), dZ.reshape(T * B, D)  # (T*B, D) views
    ids, y = inputs.reshape(T * B), targets.reshape(T * B)
    np.take(np.ascontiguousarray(U.T) + b, ids, axis=0, out=S2)  # U x_t + b, a gather
    WT = W.T  # (D, D)
    np.tanh(S[0], out=S[0])
    for t in range(1, T):  # eqs. (19)-(20)
        np.matmul(S[t - 1], WT, out=z)
        np.add(z, S[t], out=z)
        np.tanh(z, out=S[t])
    np.matmul(S2, V.T, out=G)  # eq. (21)  (T*B, C)
    G += c
    # softmax and cross-entropy in place: logits -> dL/dg = yhat - y (eqs. 23, 44)
    G.max(axis=1, keepdims=True, out=m)
    G -= m
    picked = G[rows, y]  # g[y] - m
    np.exp(G, out=G)
    G.sum(axis=1, keepdims=True, out=tot)
    G /= tot
    G[rows, y] -= 1
    loss = (np.sum(np.log(tot)) - np.sum(picked)) / (T * B)  # eq. (23), the mean
    G *= W.dtype.type(1.0 / (T * B))
    grads = {"V": G.T @ S2, "c": G.sum(axis=0)}  # eqs. (54), (71)
    np.matmul(G, V, out=dZ2)  # eq. (56)
    np.multiply(S[T - 1], S[T - 1], out=q)
    np.subtract(1, q, out=q)
    dZ[T - 1] *= q
    for t in range(T - 2, -1, -1):
        np.matmul(dZ[t + 1], W, out=z)
        z += dZ[t]
        np.multiply(S[t], S[t], out=q)
        q *= z
        np.subtract(z, q, out=dZ[t])  # eq. (62) factor
    grads["W"] = dZ[1:].reshape((T - 1) * B, D).T @ S[:-1].reshape((T - 1) * B, D)  # eq. (67)
    grads["b"] = dZ2.sum(axis=0)
    X[rows, ids] = 1  # one-hot, cleared again below
    grads["U"] = dZ2.T @ X  # eq. (69), the one-hot GEMM
    X[rows, ids] = 0
    return loss, {k: grads[k] for k in params}
