"""The two recurrences for NumPy, each step written straight into the result.

:func:`bptt.math.model.recurrence` and :func:`bptt.math.model.reverse_recurrence` collect the
steps and stack them once: one operation on a GPU, and the only way on JAX. On
NumPy that stack reads T arrays back from memory after the loop, and the
precomputed tanh' of the backward pass is two more passes over (T, B, D) arrays:
8-12% of a step at S2 and S3 (benchmarks/NOTES.md, round 5). Here ``tanh`` and the
product by tanh' write into the (n+1, B, D) and (n, B, D) results through ``out=``
while the step is still in cache, and tanh' is made per step in one (B, D) buffer.

Same contract and the same bits as the functions of :mod:`bptt.math.model` (every value
is computed by the same operations in the same order; tests/test_schedules.py holds
them to ``array_equal``). Used by every NumPy schedule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .gated import gru_recurrence, gru_reverse_recurrence, lstm_recurrence, lstm_reverse_recurrence

__all__ = [
    "gru_recurrence",
    "gru_reverse_recurrence",
    "lstm_recurrence",
    "lstm_reverse_recurrence",
    "recurrence",
    "reverse_recurrence",
]


def _relu(z: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0, out=out)  # eq. (B17): the bits of maximum(z, 0-d zero)


def recurrence(W: Any, xu: Any, s: Any, xp: Any, nonlinearity: str = "tanh") -> np.ndarray:
    """As :func:`bptt.math.model.recurrence`: s_0 .. s_n, (n+1, B, D), eqs. (19)-(20)."""
    n, B, D = xu.shape
    WT = W.T  # (D, D)
    f = np.tanh if nonlinearity == "tanh" else _relu
    states = np.empty((n + 1, B, D), dtype=xu.dtype)  # s_0 .. s_n
    states[0] = 0 if s is None else s
    for t in range(n):
        if s is None:
            z = xu[t]  # (B, D): U x_1 + b
        else:
            z = s @ WT  # (B, D), a fresh array
            z += xu[t]
        s = f(z, out=states[t + 1])  # eq. (20), in place in the result
    return states


def reverse_recurrence(
    W: Any, states: Any, dS: Any, dz: Any, xp: Any, nonlinearity: str = "tanh"
) -> np.ndarray:
    """As :func:`bptt.math.model.reverse_recurrence`: dz_n .. dz_1 into (n, B, D), eq. (62)."""
    n, B, D = dS.shape
    dZ = np.empty((n, B, D), dtype=dS.dtype)
    tanh_prime = np.empty((B, D), dtype=dS.dtype)  # f'(z_t), one step at a time
    tanh = nonlinearity == "tanh"
    for t in range(n - 1, -1, -1):
        s = states[t + 1]  # (B, D)
        if tanh:  # 1 - s_t^2, eq. (62)
            np.multiply(s, s, out=tanh_prime)
            np.subtract(1, tanh_prime, out=tanh_prime)
        else:  # s_t > 0 written as 1.0 / 0.0, eq. (B17)
            np.greater(s, 0, out=tanh_prime)
        if dz is None:  # step T: nothing flows back from the future
            dz = np.multiply(dS[t], tanh_prime, out=dZ[t])
        else:
            g = dz @ W  # (B, D): W^T dz_{t+1} as rows, a fresh array
            g += dS[t]
            dz = np.multiply(g, tanh_prime, out=dZ[t])  # with the tanh' that eqs. (13)-(15) drop
    return dZ
