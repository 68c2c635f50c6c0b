"""What the gated cells (:mod:`bptt.math.gru`, :mod:`bptt.math.lstm`) share: the halved sigmoid
rows, the initial state, the stack of states and the weight gradients.

Pure math, like :mod:`bptt.math.model`: only the namespace ``xp`` it is given. A cell's
G gates are G blocks of D rows of U (G D, M), W (G D, D) and b (G D,), in torch's
order; ``XU`` (T, B, G D) is the input projection U x_t + b of every step
(:func:`bptt.math.model.input_projection`), ``dXU`` its gradient and ``dHW`` the gradient
of the hidden projection h_{t-1} W^T (+ the GRU's b_hn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from array_api_compat import device  # x.device, or None for a JAX tracer (jit places it)

from .model import column_sums, is_token_ids, one_hot

__all__ = ["gate_scale", "scaled_transpose", "stack_states", "weight_grads", "zero_state"]


def gate_scale(sigmoid: Sequence[bool], like: Any, xp: Any) -> Any:
    """(G D,) multipliers: 1/2 on the rows of a sigmoid gate, 1 on a tanh gate's.

    sigma(a) = (1 + tanh(a / 2)) / 2 (eq. (G5)): with W's and XU's sigmoid rows halved
    once per call (exact: a power of two), one tanh per step serves every gate and
    never overflows. ``like`` (G D, ...) gives D, the dtype and the device.
    """
    D = like.shape[0] // len(sigmoid)
    dev = device(like)
    blocks = [xp.full((D,), 0.5 if s else 1.0, dtype=like.dtype, device=dev) for s in sigmoid]
    return xp.concat(blocks)  # (G D,)


def scaled_transpose(W: Any, sigmoid: Sequence[bool], xp: Any) -> Any:
    """W^T (D, G D) with the sigmoid gates' columns halved (eq. (G5)), made once per call
    as a fresh row-major array: the per-step product h @ W^T is then a plain GEMM (on
    NumPy twice as fast as through the transposed view at D = 100)."""
    D = W.shape[1]
    blocks = [W[k * D : (k + 1) * D, ...].T for k in range(len(sigmoid))]  # (D, D) views
    return xp.concat([b * 0.5 if s else b for b, s in zip(blocks, sigmoid, strict=True)], axis=1)


def zero_state(xu: Any, D: int, xp: Any) -> Any:
    """The zero state (B, D) in ``xu``'s dtype and on its device (h0 or c0 = None)."""
    return xp.zeros((xu.shape[1], D), dtype=xu.dtype, device=device(xu))


def stack_states(h0: Any, H: Any, xp: Any) -> Any:
    """h_0 before h_1 .. h_T (T, B, D): (T+1, B, D), so that dW is one product."""
    return xp.concat([h0[None, ...], H], axis=0)


def weight_grads(
    p: Any, dXU: Any, dHW: Any, H: Any, inputs: Any, xp: Any, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """dW, dU, db and the extra biases of a gated cell, one product or sum each.

    dW = sum_t dHW_t^T h_{t-1} (eqs. (G10), (L9)), dU = sum_t dXU_t^T x_t (token ids:
    their one-hot rows, as (B13)), db = sum_t dXU_t^T 1; an extra bias (GRU: b_hn) is
    the column sums of dHW's last block of D rows (the n rows). Keys in ``p``'s order.
    """
    T, B, GD = dXU.shape
    D = H.shape[2]
    dHW2 = xp.reshape(dHW, (T * B, GD))  # (T B, G D)
    dXU2 = xp.reshape(dXU, (T * B, GD))  # (T B, G D)
    grads = {"W": dHW2.T @ xp.reshape(H[:-1, ...], (T * B, D))}  # (G D, D)
    if is_token_ids(inputs):
        X = one_hot(xp.reshape(inputs, (T * B,)), p["U"].shape[1], dXU.dtype, xp)  # (T B, M)
    else:
        X = xp.reshape(inputs, (T * B, inputs.shape[2]))  # (T B, M)
    grads["U"] = dXU2.T @ X  # (G D, M)
    if p.get("b") is not None:
        grads["b"] = column_sums(dXU2, xp)  # (G D,)
    for name in extra:
        if p.get(name) is not None:
            grads[name] = column_sums(dHW2[:, GD - D :], xp)  # (D,)
    return {key: grads[key] for key in p if key in grads}
