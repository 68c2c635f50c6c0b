"""The GRU and LSTM recurrences for NumPy, each step written straight into the results.

:mod:`bptt.math.gru` and :mod:`bptt.math.lstm` run their steps through ``scan``, which collects
each step's outputs and stacks them once at the end: the only way on JAX and one
operation on a GPU. On NumPy that stack reads every output back from memory after
the loop, and each step allocates its temporaries afresh. Here every operation of a
step writes through ``out=`` into the (T, B, *) results or into a few (B, *) buffers
reused by all steps, while the step is still in cache.

Same contract as the functions of the cell modules (``scan`` is accepted and
ignored) and the same bits: every value is computed by the same operations in the
same order; the factors before the reverse loop are the cells' own
``backward_factors``. tests/test_gated_cells.py holds them to ``array_equal``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ...math import gru, lstm
from ...math.gates import gate_scale, scaled_transpose

PER_STEP_FROM = 16384  # B D from which "auto" makes the backward factors step by step

__all__ = [
    "PER_STEP_FROM",
    "gru_recurrence",
    "gru_reverse_recurrence",
    "lstm_recurrence",
    "lstm_reverse_recurrence",
]


def gru_recurrence(
    p: Mapping[str, Any], xu: np.ndarray, s0: Any, xp: Any = np, scan: Any = None
) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray]:
    """As :func:`bptt.math.gru.recurrence`: ``(H, (RZ, N, Q), h_T)``, eqs. (G1)-(G5)."""
    W, b_hn = p["W"], p.get("b_hn")
    T, B, GD = xu.shape
    D = GD // 3
    WT = scaled_transpose(W, (True, True, False), np)  # (D, 3D), eq. (G5)
    H = np.empty((T + 1, B, D), dtype=xu.dtype)
    RZ = np.empty((T, B, 2 * D), dtype=xu.dtype)
    N, Q = np.empty((T, B, D), dtype=xu.dtype), np.empty((T, B, D), dtype=xu.dtype)
    hw = np.empty((B, 3 * D), dtype=xu.dtype)  # per-step buffers
    a = np.empty((B, D), dtype=xu.dtype)
    H[0] = 0 if s0 is None else s0
    for t in range(T):
        np.matmul(H[t], WT, out=hw)  # eq. (G1)
        rz = np.multiply(xu[t, :, : 2 * D], 0.5, out=RZ[t])  # halved step by step
        rz += hw[:, : 2 * D]
        np.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5  # eqs. (G2), (G5)
        if b_hn is None:
            Q[t] = hw[:, 2 * D :]
        else:
            np.add(hw[:, 2 * D :], b_hn, out=Q[t])
        np.multiply(rz[:, :D], Q[t], out=a)
        a += xu[t, :, 2 * D :]
        n = np.tanh(a, out=N[t])  # eq. (G3)
        h = np.subtract(H[t], n, out=H[t + 1])
        h *= rz[:, D:]
        h += n  # eq. (G4)
    return H, (RZ, N, Q), H[T]


def _per_step(B: int, D: int, factors: str) -> bool:
    """Make the backward factors step by step (in cache) rather than all at once before
    the loop (whole (T, B, *) passes through memory): "auto" does so from B D =
    PER_STEP_FROM on, where the passes cost more than the extra calls per step."""
    return factors == "per-step" or (factors == "auto" and B * D >= PER_STEP_FROM)


def _gru_factors_at(
    t: int, H: np.ndarray, aux: tuple[np.ndarray, ...], F: np.ndarray, dn: np.ndarray,
    tmp: np.ndarray,
) -> None:  # fmt: skip
    """:func:`bptt.math.gru.backward_factors` at step t into F (3, B, D) and dn (B, D): the
    same operations in the same order, so the same bits."""
    RZ, N, Q = aux
    D = N.shape[2]
    r, z, n = RZ[t, :, :D], RZ[t, :, D:], N[t]
    np.subtract(1, z, out=dn)
    np.multiply(n, n, out=tmp)
    np.subtract(1, tmp, out=tmp)
    dn *= tmp  # (1 - z) (1 - n^2), eq. (G8)
    np.subtract(1, r, out=tmp)
    tmp *= r  # r (1 - r)
    np.multiply(dn, Q[t], out=F[0])
    F[0] *= tmp
    np.subtract(1, z, out=tmp)
    tmp *= z  # z (1 - z)
    np.subtract(H[t], n, out=F[1])
    F[1] *= tmp
    np.multiply(dn, r, out=F[2])  # eq. (G11)


def gru_reverse_recurrence(
    p: Mapping[str, Any], H: np.ndarray, aux: tuple[np.ndarray, ...], dS: np.ndarray,
    xp: Any = np, scan: Any = None, factors: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """As :func:`bptt.math.gru.reverse_recurrence`: ``(dXU, dHW, dh0)``, eqs. (G7)-(G11).
    ``factors``: "before" the loop, "per-step", or "auto" (:func:`_per_step`)."""
    W = p["W"]
    T, B, D = dS.shape
    z = aux[0][..., D:]  # (T, B, D)
    per_step = _per_step(B, D, factors)
    if per_step:
        F_t, dn_t, tmp = np.empty((3, B, D), dS.dtype), np.empty((B, D), dS.dtype), np.empty(
            (B, D), dS.dtype)  # fmt: skip
    else:
        F, dn, _ = gru.backward_factors(H, aux, np)
    dHW = np.empty((T, B, 3 * D), dtype=dS.dtype)
    dXU = np.empty((T, B, 3 * D), dtype=dS.dtype)
    g, direct = np.zeros((B, D), dtype=dS.dtype), np.empty((B, D), dtype=dS.dtype)
    for t in range(T - 1, -1, -1):
        if per_step:
            _gru_factors_at(t, H, aux, F_t, dn_t, tmp)
            F_here, dn_here = F_t.transpose(1, 0, 2), dn_t  # (B, 3, D) view
        else:
            F_here, dn_here = F[t], dn[t]
        dh = np.add(dS[t], g, out=direct)  # eq. (G7)
        np.multiply(dh[:, None, :], F_here, out=dHW[t].reshape(B, 3, D))  # eqs. (G8)-(G9)
        dXU[t, :, : 2 * D] = dHW[t, :, : 2 * D]  # while in cache
        np.multiply(dh, dn_here, out=dXU[t, :, 2 * D :])  # eq. (G9)
        np.matmul(dHW[t], W, out=g)
        dh *= z[t]
        g += dh  # eq. (G7)
    return dXU, dHW, g


def lstm_recurrence(
    p: Mapping[str, Any], xu: np.ndarray, s0: Any, xp: Any = np, scan: Any = None
) -> tuple[np.ndarray, tuple[np.ndarray, ...], tuple[np.ndarray, np.ndarray]]:
    """As :func:`bptt.math.lstm.recurrence`: ``(H, (A, G, C, TC), (h_T, c_T))``, (L1)-(L4)."""
    W = p["W"]
    T, B, GD = xu.shape
    D = GD // 4
    WT = scaled_transpose(W, lstm.SIGMOID, np)  # (D, 4D), eq. (G5)
    scale = gate_scale(lstm.SIGMOID, W, np)  # (4D,): XU halved step by step, in cache
    H, Call = np.empty((T + 1, B, D), dtype=xu.dtype), np.empty((T + 1, B, D), dtype=xu.dtype)
    A = np.empty((T, B, 4 * D), dtype=xu.dtype)
    G, TC = np.empty((T, B, D), dtype=xu.dtype), np.empty((T, B, D), dtype=xu.dtype)
    a, ig = np.empty((B, 4 * D), dtype=xu.dtype), np.empty((B, D), dtype=xu.dtype)
    xs = np.empty((B, 4 * D), dtype=xu.dtype)
    H[0] = 0 if s0 is None else s0[0]
    Call[0] = 0 if s0 is None else s0[1]
    for t in range(T):
        np.matmul(H[t], WT, out=a)  # eq. (L1)
        a += np.multiply(xu[t], scale, out=xs)
        np.tanh(a, out=a)
        u = np.multiply(a, 0.5, out=A[t])
        u += 0.5  # eqs. (L2), (G5)
        G[t] = a[:, 2 * D : 3 * D]
        c = np.multiply(u[:, D : 2 * D], Call[t], out=Call[t + 1])
        c += np.multiply(u[:, :D], G[t], out=ig)  # eq. (L3)
        np.tanh(c, out=TC[t])
        np.multiply(u[:, 3 * D :], TC[t], out=H[t + 1])  # eq. (L4)
    return H, (A, G, Call[:T], TC), (H[T], Call[T])


def _lstm_factors_at(
    t: int, aux: tuple[np.ndarray, ...], F: np.ndarray, dc_dh: np.ndarray, tmp: np.ndarray
) -> None:
    """:func:`bptt.math.lstm.backward_factors` at step t into F (B, 4D) and dc_dh (B, D):
    the same operations in the same order, so the same bits."""
    A, G, C, TC = aux
    D = G.shape[2]
    a, tc = A[t], TC[t]
    np.multiply(tc, tc, out=dc_dh)
    np.subtract(1, dc_dh, out=dc_dh)
    np.multiply(a[:, 3 * D :], dc_dh, out=dc_dh)  # o (1 - tanh^2 c), eq. (L7)
    F[:, :D], F[:, D : 2 * D] = G[t], C[t]
    np.multiply(4, a[:, :D], out=F[:, 2 * D : 3 * D])
    F[:, 3 * D :] = tc
    np.subtract(1, a, out=tmp)
    tmp *= a  # s (1 - s)
    np.multiply(tmp, F, out=F)  # eq. (L8)


def lstm_reverse_recurrence(
    p: Mapping[str, Any], H: np.ndarray, aux: tuple[np.ndarray, ...], dS: np.ndarray,
    xp: Any = np, scan: Any = None, factors: str = "auto",
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """As :func:`bptt.math.lstm.reverse_recurrence`: ``(dA, dA, (dh0, dc0))``, (L6)-(L9).
    ``factors``: "before" the loop, "per-step", or "auto" (:func:`_per_step`)."""
    W = p["W"]
    T, B, D = dS.shape
    f = aux[0][..., D : 2 * D]  # (T, B, D)
    per_step = _per_step(B, D, factors)
    if per_step:
        F_t, dc_dh_t = np.empty((B, 4 * D), dS.dtype), np.empty((B, D), dS.dtype)
        tmp = np.empty((B, 4 * D), dS.dtype)
    else:
        F, dc_dh, _ = lstm.backward_factors(aux, np)
    dA = np.empty((T, B, 4 * D), dtype=dS.dtype)
    g, dc_next = np.zeros((B, D), dtype=dS.dtype), np.zeros((B, D), dtype=dS.dtype)
    dh, dc = np.empty((B, D), dtype=dS.dtype), np.empty((B, D), dtype=dS.dtype)
    for t in range(T - 1, -1, -1):
        if per_step:
            _lstm_factors_at(t, aux, F_t, dc_dh_t, tmp)
            F_here, dc_dh_here = F_t, dc_dh_t
        else:
            F_here, dc_dh_here = F[t], dc_dh[t]
        np.add(dS[t], g, out=dh)  # eq. (L6)
        np.multiply(dh, dc_dh_here, out=dc)
        dc += dc_next  # eq. (L7)
        da, F3 = dA[t].reshape(B, 4, D), F_here.reshape(B, 4, D)  # views
        np.multiply(dc[:, None, :], F3[:, :3], out=da[:, :3])  # [dc, dc, dc] F, eq. (L8)
        np.multiply(dh, F3[:, 3], out=da[:, 3])  # dh F on the o rows
        np.matmul(dA[t], W, out=g)
        np.multiply(dc, f[t], out=dc_next)
    return dA, dA, (g, dc_next)
