"""One LSTM cell (one layer, one direction): the forward pass and its BPTT backward pass.

Torch's equations and gate order (i, f, g, o), so weights move between the two
unchanged (:func:`from_torch_cell`, :func:`to_torch_cell`). Parameters, G = 4 gates
of D rows::

    U (4D, M) = weight_ih    W (4D, D) = weight_hh    b (4D,) = bias_ih + bias_hh

Forward, rows of a batch (eqs. (L1)-(L4)), state (h, c)::

    a = XU + h W^T     i, f, o = sigma(a^i, a^f, a^o)     g = tanh(a^g)
    c' = f * c + i * g                                    h' = o * tanh(c')

Backward (eqs. (L6)-(L9)): dh_t = dS_t + dA_{t+1} W, dc_t = dh_t * o_t * (1 - tanh^2
c_t) + dc_{t+1} * f_{t+1}, and dA_t (= dXU_t = dHW_t) is [dc, dc, dc, dh]_t times
factors computed for all steps at once before the loop.

Kernels per step (array API operations; ``tests/test_gated_cells.py`` counts them):
forward 1 product + 9 elementwise: + XU, one tanh over all 4D rows (the sigmoid rows
halved, eq. (G5)), two for (1 + tanh)/2, f * c, i * g, +, tanh(c'), o * tanh(c').
Backward 1 product + 6 elementwise: dS_t + the carry, dh * (o (1 - tanh^2 c)), + dc,
the stack [dc, dc, dc, dh], its product with the factors, dc * f.
Pure math, like :mod:`bptt.math.model`: no host reads, no value-dependent control flow;
the loops run through ``scan`` (:func:`bptt.math.scan.python_scan` or ``lax.scan``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .gates import gate_scale, scaled_transpose, stack_states, zero_state
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

GATES = 4  # i, f, g, o
STATE_PARTS = 2  # (h, c)
EXTRA_BIASES: tuple[str, ...] = ()
KERNELS_PER_STEP = {"forward": 10, "forward_no_bias": 10, "backward": 7}  # products included
SIGMOID = (True, True, False, True)  # i, f, o are sigmoid gates, g a tanh gate


def param_shapes(M: int, D: int, *, bias: bool = True) -> dict[str, tuple[int, ...]]:
    """The cell's own parameters and their shapes (no b without bias)."""
    shapes: dict[str, tuple[int, ...]] = {"U": (4 * D, M), "W": (4 * D, D)}
    if bias:
        shapes["b"] = (4 * D,)
    return shapes


def recurrence(
    p: Mapping[str, Any], xu: Any, s0: Any, xp: Any, scan: Scan = python_scan
) -> tuple[Any, tuple[Any, ...], Any]:
    """Eqs. (L1)-(L4), (G5) over T steps: ``(H, (A, G, C, TC), (h_T, c_T))``.

    ``xu`` (T, B, 4D) is U x_t + b; ``s0`` the pair (h_0, c_0) of (B, D) arrays (None:
    zeros). ``H`` (T+1, B, D) holds h_0 .. h_T. ``A`` (T, B, 4D) holds i, f, (1 + g)/2,
    o (the third block unused), ``G`` (T, B, D) g, ``C`` (T, B, D) c_0 .. c_{T-1} (the
    cell state before each step) and ``TC`` (T, B, D) tanh(c_1) .. tanh(c_T).
    """
    W = p["W"]
    GD = xu.shape[2]
    D = GD // 4
    scale = gate_scale(SIGMOID, W, xp)  # (4D,): 1/2 on i, f, o, eq. (G5)
    WT = scaled_transpose(W, SIGMOID, xp)  # (D, 4D), the same halving
    xs = xu * scale  # (T, B, 4D), halved once for all steps
    h0, c0 = s0 if s0 is not None else (zero_state(xu, D, xp), zero_state(xu, D, xp))

    def step(carry: tuple[Any, Any], x: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        h, c = carry  # (B, D) each
        a = h @ WT  # (B, 4D): the one product of the step, eq. (L1)
        a += x[0]  # + XU_t (halved on the sigmoid rows)
        t = xp.tanh(a)  # g exactly, and tanh(a/2) on i, f, o
        u = t * 0.5
        u += 0.5  # i, f, o = sigma(a), eqs. (L2), (G5)
        g = t[:, 2 * D : 3 * D]
        c_new = u[:, D : 2 * D] * c  # f * c_{t-1}
        c_new += u[:, :D] * g  # + i * g, eq. (L3)
        tc = xp.tanh(c_new)
        h_new = u[:, 3 * D :] * tc  # o * tanh(c_t), eq. (L4)
        return (h_new, c_new), (h_new, u, g, c, tc)

    last, (H, A, G, C, TC) = scan(step, (h0, c0), (xs,), xp)
    return stack_states(h0, H, xp), (A, G, C, TC), last


def backward_factors(aux: tuple[Any, ...], xp: Any) -> tuple[Any, Any, Any]:
    """What multiplies dc_t and dh_t in eqs. (L7)-(L8), for all steps at once: ``F``
    (T, B, 4D) with dA_t = [dc, dc, dc, dh]_t * F_t, ``dc_dh`` (T, B, D) = o (1 - tanh^2
    c), and ``f`` (T, B, D), the forget gates that carry dc back."""
    A, G, C, TC = aux
    D = G.shape[2]
    i, f, o = A[..., :D], A[..., D : 2 * D], A[..., 3 * D :]  # (T, B, D) each
    # In place on fresh arrays: fewer (T, B, *) temporaries (fresh pages on NumPy at S3)
    dc_dh = TC * TC
    dc_dh *= -1
    dc_dh += 1
    dc_dh *= o  # o (1 - tanh^2 c)  (T, B, D), eq. (L7)
    # sigma' = s (1 - s) on i, f, o, eq. (G5); on A's third block (1 + g)/2 it is
    # (1 - g^2)/4, so 4 i times it is dA^g's factor i (1 - g^2): one product for all
    F = 1 - A
    F *= A  # (T, B, 4D), contiguous passes
    F *= xp.concat([G, C, 4 * i, TC], axis=-1)  # (T, B, 4D), eq. (L8)
    return F, dc_dh, f


def reverse_recurrence(
    p: Mapping[str, Any], H: Any, aux: tuple[Any, ...], dS: Any, xp: Any,
    scan: Scan = python_scan, d_last: Any = None,
) -> tuple[Any, Any, tuple[Any, Any]]:  # fmt: skip
    """Eqs. (L6)-(L9), last step first: ``(dA, dA, (dh0, dc0))``.

    ``H``, ``aux`` as :func:`recurrence` returns them; ``dS`` (T, B, D) the gradient
    reaching h_t from outside the recurrence. dA (T, B, 4D) is both dXU and dHW (the
    same array: x_t and h_{t-1} enter only through a_t). The third value is the FULL
    dL/ds_0, the pair (dh0, dc0) of (B, D) arrays (eq. (L9)). ``d_last``: the pair
    (dh, dc) reaching (h_T, c_T) from after these steps (None: zeros).
    """
    W = p["W"]
    D = dS.shape[2]
    F, dc_dh, f = backward_factors(aux, xp)

    def step(carry: tuple[Any, Any], x: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        g, dc_next = carry  # dA_{t+1} W and dc_{t+1} f_{t+1}, (B, D) each
        dS_t, F_t, dc_dh_t, f_t = x
        dh = dS_t + g  # dL/dh_t, eq. (L6)
        dc = dh * dc_dh_t
        dc += dc_next  # dL/dc_t, eq. (L7)
        dA = xp.concat([dc, dc, dc, dh], axis=1) * F_t  # (B, 4D), eq. (L8)
        return (dA @ W, dc * f_t), (dA,)  # to h_{t-1} through W; to c_{t-1} through f

    zero = zero_state(dS, D, xp)
    future = (zero, zero) if d_last is None else d_last  # into (h_T, c_T)
    (dh0, dc0), (dA,) = scan(step, future, (dS, F, dc_dh, f), xp, reverse=True)
    return dA, dA, (dh0, dc0)


def weight_grads(
    p: Mapping[str, Any], dXU: Any, dHW: Any, H: Any, inputs: Any, xp: Any
) -> dict[str, Any]:
    """dW, dU, db (eq. (L9)), one product or one sum each, keys in p's order."""
    return _weight_grads(p, dXU, dHW, H, inputs, xp)


def from_torch_cell(
    weight_ih: Any, weight_hh: Any, bias_ih: Any = None, bias_hh: Any = None
) -> dict[str, Any]:
    """torch's LSTM cell weights (host NumPy) -> U, W, b = bias_ih + bias_hh (eq. (L5))."""
    p = {"U": np.array(weight_ih), "W": np.array(weight_hh)}
    if bias_ih is not None:
        p["b"] = np.asarray(bias_ih) + np.asarray(bias_hh)  # only the sum enters a
    return p


def to_torch_cell(p: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
    """U, W, b (host NumPy) -> weight_ih, weight_hh, bias_ih = b, bias_hh = 0."""
    U, W, b = np.array(p["U"]), np.array(p["W"]), p.get("b")
    if b is None:
        return U, W, None, None
    return U, W, np.array(b), np.zeros_like(np.asarray(b))
