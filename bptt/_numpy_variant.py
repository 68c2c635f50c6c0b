"""The fastest NumPy-only training step we could write: the yardstick for the array-API path.

Not used by the library. :mod:`bptt.bench` times it beside ``loss_and_grad`` on
NumPy, because the array-API path must stay within 10% of it (issue 4). What
it may do that the standard may not: ``out=`` on every ufunc and matmul,
buffers kept between steps, scatter-subtraction into the softmax gradient.
It does the same arithmetic (eqs. 19-21, 44, 54-56, 62, 67-73; see
:mod:`bptt.model`) with the same thread split of tanh and of the head
(:mod:`bptt._parallel`), for the softmax head, token-id inputs, mean
reduction, biases, h0 = 0 only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _parallel

__all__ = ["loss_and_grad"]

_buffers: dict[tuple, dict[str, np.ndarray]] = {}


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


def _softmax_rows(G: np.ndarray, y: np.ndarray, ws: dict[str, Any], r: slice) -> Any:
    """In place on G[r]: logits -> dL/dg = yhat - y (eq. 44); returns the summed loss."""
    g, m, tot = G[r], ws["m"][r], ws["tot"][r]
    rows = ws["rows"][: r.stop - r.start]
    g.max(axis=1, keepdims=True, out=m)
    g -= m
    picked = g[rows, y[r]]  # g[y] - m
    np.exp(g, out=g)
    g.sum(axis=1, keepdims=True, out=tot)
    g /= tot
    g[rows, y[r]] -= 1
    return np.sum(np.log(tot)) - np.sum(picked)  # eq. (23)


def loss_and_grad(params: dict[str, Any], inputs: Any, targets: Any) -> tuple[Any, dict[str, Any]]:
    """Mean softmax cross-entropy (0-d) and gradients for token ids (T, B) -> (T, B)."""
    with _parallel.small_blas(np, inputs.shape[1] * params["W"].shape[0] ** 2):
        return _loss_and_grad(params, inputs, targets)


def _loss_and_grad(params: dict[str, Any], inputs: Any, targets: Any) -> tuple[Any, dict[str, Any]]:
    U, W, V, b, c = (params[k] for k in ("U", "W", "V", "b", "c"))
    T, B = inputs.shape
    D, M = U.shape
    C = V.shape[0]
    ws = _workspace(T, B, D, C, M, W.dtype)
    S, G, dZ, X, rows, z, q = (ws[k] for k in ("S", "G", "dZ", "X", "rows", "z", "q"))
    S2, dZ2 = S.reshape(T * B, D), dZ.reshape(T * B, D)  # (T*B, D) views
    ids, y = inputs.reshape(T * B), targets.reshape(T * B)
    np.take(np.ascontiguousarray(U.T) + b, ids, axis=0, out=S2)  # U x_t + b, a gather
    WT = W.T  # (D, D)
    blocks = _parallel.row_blocks(np, B, B * D, W.dtype.itemsize)
    np.tanh(S[0], out=S[0])
    for t in range(1, T):  # eqs. (19)-(20)
        np.matmul(S[t - 1], WT, out=z)
        np.add(z, S[t], out=z)
        _parallel.run_blocks(lambda r, t=t: np.tanh(z[r], out=S[t, r]), blocks)
    np.matmul(S2, V.T, out=G)  # eq. (21)  (T*B, C)
    G += c
    head = _parallel.row_blocks(
        np,
        T * B,
        T * B * C,
        W.dtype.itemsize,
        min_work=_parallel.HEAD_MIN_WORK,
        float64_cost=_parallel.HEAD_FLOAT64_COST,
    )
    parts: list[Any] = []
    _parallel.run_blocks(lambda r: parts.append(_softmax_rows(G, y, ws, r)), head)
    loss = sum(parts) / (T * B)
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
