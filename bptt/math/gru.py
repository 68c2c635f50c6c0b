"""One GRU cell (one layer, one direction): the forward pass and its BPTT backward pass.

Torch's equations and gate order (r, z, n), so weights move between the two unchanged
(:func:`from_torch_cell`, :func:`to_torch_cell`). Parameters, G = 3 gates of D rows::

    U (3D, M) = weight_ih    W (3D, D) = weight_hh    b (3D,)    b_hn (D,)

b is bias_ih + bias_hh on the r and z rows and bias_ih on the n rows; b_hn is
bias_hh's n rows, kept apart because torch puts it inside the reset product
(eq. (G6)). Forward, rows of a batch (eqs. (G1)-(G4))::

    r = sigma(XU^r + h W_r^T)      z = sigma(XU^z + h W_z^T)
    q = h W_n^T + b_hn             n = tanh(XU^n + r * q)      h' = n + z * (h - n)

Backward (eqs. (G7)-(G9)): dh_t = dS_t + dHW_{t+1} W + dh_{t+1} * z_{t+1}, and
dHW_t = dh_t * F_t blockwise, with every factor F_t computed for all steps at once
before the loop (eq. (G11)).

Kernels per step (array API operations; ``tests/test_gated_cells.py`` counts them):
forward 1 product + 11 elementwise (10 without b_hn): the r, z sum, one tanh and
two for sigma = (1 + tanh(a/2))/2 (eq. (G5)), + b_hn, r * q, + XU^n, tanh, and three
for h'. Backward 1 product + 4 elementwise: dS_t + the carry, dh * F_t, dh * z, +.
Pure math, like :mod:`bptt.math.model`: no host reads, no value-dependent control flow;
the loops run through ``scan`` (:func:`bptt.math.scan.python_scan` or ``lax.scan``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .gates import scaled_transpose, stack_states, zero_state
from .gates import weight_grads as _weight_grads
from .model import input_grads, input_projection
from .scan import Scan, python_scan

__all__ = [
    "EXTRA_BIASES",
    "GATES",
    "KERNELS_PER_STEP",
    "STATE_PARTS",
    "backward_factors",
    "from_torch_cell",
    "input_grads",
    "input_projection",
    "param_shapes",
    "recurrence",
    "reverse_recurrence",
    "to_torch_cell",
    "weight_grads",
]

GATES = 3  # r, z, n
STATE_PARTS = 1  # h
EXTRA_BIASES = ("b_hn",)
KERNELS_PER_STEP = {"forward": 12, "forward_no_bias": 11, "backward": 5}  # products included


def param_shapes(M: int, D: int, *, bias: bool = True) -> dict[str, tuple[int, ...]]:
    """The cell's own parameters and their shapes (no b, b_hn without bias)."""
    shapes: dict[str, tuple[int, ...]] = {"U": (3 * D, M), "W": (3 * D, D)}
    if bias:
        shapes.update(b=(3 * D,), b_hn=(D,))
    return shapes


def recurrence(
    p: Mapping[str, Any], xu: Any, s0: Any, xp: Any, scan: Scan = python_scan
) -> tuple[Any, tuple[Any, ...], Any]:
    """Eqs. (G1)-(G5) over T steps: ``(H, (RZ, N, Q), h_T)``.

    ``xu`` (T, B, 3D) is U x_t + b; ``s0`` (B, D) is h_0 (None: zeros). ``H`` (T+1, B, D)
    holds h_0 .. h_T; ``RZ`` (T, B, 2D) the gates r and z, ``N`` (T, B, D) n and ``Q``
    (T, B, D) the hidden part of n, h_{t-1} W_n^T + b_hn: what the backward pass needs.
    """
    W, b_hn = p["W"], p.get("b_hn")
    GD = xu.shape[2]
    D = GD // 3
    WT = scaled_transpose(W, (True, True, False), xp)  # (D, 3D): r, z halved, eq. (G5)
    x_rz = xu[..., : 2 * D] * 0.5  # (T, B, 2D): halved input part of r, z, eq. (G5)
    h0 = s0 if s0 is not None else zero_state(xu, D, xp)  # (B, D)

    def step(h: Any, x: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        x_rz_t, x_n_t = x  # (B, 2D), (B, D)
        hw = h @ WT  # (B, 3D): the one product of the step, eq. (G1)
        rz = x_rz_t + hw[:, : 2 * D]  # (B, 2D): a / 2 for r and z
        rz = xp.tanh(rz)
        rz *= 0.5
        rz += 0.5  # sigma(a), eqs. (G2), (G5)
        q = hw[:, 2 * D :] if b_hn is None else hw[:, 2 * D :] + b_hn  # (B, D), eq. (G1)
        a = rz[:, :D] * q  # r * q  (B, D)
        a += x_n_t
        n = xp.tanh(a)  # (B, D), eq. (G3)
        h = h - n
        h *= rz[:, D:]
        h += n  # n + z (h_{t-1} - n), eq. (G4)
        return h, (h, rz, n, q)

    last, (H, RZ, N, Q) = scan(step, h0, (x_rz, xu[..., 2 * D :]), xp)
    return stack_states(h0, H, xp), (RZ, N, Q), last


def backward_factors(H: Any, aux: tuple[Any, ...], xp: Any) -> tuple[Any, Any, Any]:
    """What multiplies dh_t in eqs. (G8)-(G9), for all steps at once (eq. (G11)):
    ``F`` (T, B, 3, D) with dHW_t = dh_t * F_t blockwise, ``dn`` (T, B, D) the n block
    of dXU over dh, and ``z`` (T, B, D), the direct path of eq. (G7)."""
    RZ, N, Q = aux
    D = N.shape[2]
    r, z = RZ[..., :D], RZ[..., D:]  # (T, B, D) each
    # In place on fresh arrays: fewer (T, B, D) temporaries (fresh pages on NumPy at S3)
    dn, u = 1 - z, N * N
    u *= -1
    u += 1  # 1 - n^2
    dn *= u  # dA^n / dh = (1 - z)(1 - n^2)  (T, B, D), eq. (G8)
    u = 1 - r
    u *= r  # r (1 - r)
    F_r = dn * Q
    F_r *= u
    u = 1 - z
    u *= z  # z (1 - z)
    F_z = H[:-1, ...] - N
    F_z *= u
    F = xp.stack([F_r, F_z, dn * r], axis=2)  # (T, B, 3, D), eq. (G11)
    return F, dn, z


def reverse_recurrence(
    p: Mapping[str, Any], H: Any, aux: tuple[Any, ...], dS: Any, xp: Any,
    scan: Scan = python_scan, d_last: Any = None,
) -> tuple[Any, Any, Any]:  # fmt: skip
    """Eqs. (G7)-(G9), (G11), last step first: ``(dXU, dHW, dh0)``.

    ``H``, ``aux`` as :func:`recurrence` returns them; ``dS`` (T, B, D) the gradient
    reaching h_t from outside the recurrence. ``dXU`` (T, B, 3D) = dL/d(U x_t + b),
    ``dHW`` (T, B, 3D) = dL/d(h_{t-1} W^T + [0, 0, b_hn]) (``dXU`` with its n rows times
    r), and ``dh0`` (B, D) the FULL dL/dh_0: through W and through z (eq. (G10)).
    ``d_last`` (B, D): the gradient reaching h_T from after these steps (None: zero).
    """
    W = p["W"]
    B, D = dS.shape[1:]
    F, dn, z = backward_factors(H, aux, xp)

    def step(g: Any, x: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        dS_t, F_t, z_t = x  # (B, D), (B, 3, D), (B, D)
        dh = dS_t + g  # dL/dh_t, eq. (G7)
        dHW = xp.reshape(dh[:, None, :] * F_t, (B, 3 * D))  # (B, 3D), eqs. (G8)-(G9)
        g = dHW @ W  # (B, D): through W to h_{t-1}
        g += dh * z_t  # and straight through z, eq. (G7)
        return g, (dHW, dh)

    g = zero_state(dS, D, xp) if d_last is None else d_last  # (B, D): from the future
    dh0, (dHW, dH) = scan(step, g, (dS, F, z), xp, reverse=True)
    dXU = xp.concat([dHW[..., : 2 * D], dH * dn], axis=-1)  # (T, B, 3D), eq. (G9)
    return dXU, dHW, dh0


def weight_grads(
    p: Mapping[str, Any], dXU: Any, dHW: Any, H: Any, inputs: Any, xp: Any
) -> dict[str, Any]:
    """dW, dU, db, db_hn (eq. (G10)), one product or one sum each, keys in p's order."""
    return _weight_grads(p, dXU, dHW, H, inputs, xp, EXTRA_BIASES)


def from_torch_cell(
    weight_ih: Any, weight_hh: Any, bias_ih: Any = None, bias_hh: Any = None
) -> dict[str, Any]:
    """torch's GRU cell weights (host NumPy) -> U, W, b, b_hn (eq. (G6))."""
    D = weight_hh.shape[1]
    p = {"U": np.array(weight_ih), "W": np.array(weight_hh)}
    if bias_ih is not None:
        b = np.array(bias_ih)
        b[: 2 * D] += bias_hh[: 2 * D]  # r, z: only the sum enters
        p.update(b=b, b_hn=np.array(bias_hh[2 * D :]))
    return p


def to_torch_cell(p: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
    """U, W, b, b_hn (host NumPy) -> weight_ih, weight_hh, bias_ih, bias_hh: the same
    function in torch (bias_hh zero on the r, z rows, b_hn on the n rows)."""
    U, W, b = np.array(p["U"]), np.array(p["W"]), p.get("b")
    if b is None:
        return U, W, None, None
    D = W.shape[1]
    bias_hh = np.zeros_like(np.asarray(b))
    bias_hh[2 * D :] = p["b_hn"]
    return U, W, np.array(b), bias_hh
