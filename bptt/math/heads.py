"""Output heads: per-step losses and their gradients with respect to the logits.

Every head returns ``(loss_terms, dlogits)``: the loss of every (t, b) pair,
shape (T, B), and dL_t/dg_t, shape (T, B, C), for an unweighted sum of losses.
:func:`loss_weights` and :func:`reduce` apply the mask and the reduction to both.
All are stable for logits of any finite size: no exp overflow and no log(0).
Pure math, like :mod:`bptt.math.model`: only the namespace ``xp`` they are given.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import device  # x.device, or None for a JAX tracer

from .model import one_hot

__all__ = [
    "HEADS",
    "loss_weights",
    "mean_squared_error",
    "reduce",
    "sigmoid_bce",
    "softmax_cross_entropy",
]


def softmax_cross_entropy(logits: Any, targets: Any, xp: Any) -> tuple[Any, Any]:
    """Softmax (eqs. 22, B5) and cross-entropy (eq. 23) against integer targets (T, B).

    L_t = log sum_j exp(g_tj - m_t) - (g_t[y_t] - m_t), with m_t = max_j g_tj, and
    dL_t/dg_t = yhat_t - y_t (eqs. 44, B7), with y_t the one-hot of the target.
    """
    T, B, C = logits.shape
    m = xp.max(logits, axis=-1, keepdims=True)  # (T, B, 1)
    shifted = logits - m  # (T, B, C), every entry <= 0
    y = xp.reshape(one_hot(xp.reshape(targets, (T * B,)), C, logits.dtype, xp), (T, B, C))
    ones = xp.ones((C,), dtype=logits.dtype, device=device(logits))  # (C,)
    picked = xp.vecdot(shifted, y)  # g_t[y_t] - m_t, the one entry y_t selects  (T, B)
    e = xp.exp(shifted)  # (T, B, C), in (0, 1]
    del shifted  # let it go: one (T, B, C) array fewer at the peak
    total = xp.reshape(e @ ones, (T, B, 1))  # sum over classes, as a GEMV: >= 1  (T, B, 1)
    loss = xp.log(total[..., 0]) - picked  # eq. (23) via log-sum-exp  (T, B)
    e /= total  # yhat_t, eq. (22)
    e -= y  # eq. (44)
    return loss, e


def sigmoid_bce(logits: Any, targets: Any, xp: Any) -> tuple[Any, Any]:
    """Sigmoid (eq. 2) and the full binary cross-entropy against 0/1 targets (T, B, C).

    L = -y log(yhat) - (1 - y) log(1 - yhat) = max(g, 0) - g y + log(1 + exp(-|g|));
    the seed's eq. (3) keeps only the first term. dL/dg = yhat - y, as for softmax.
    """
    y = xp.astype(xp.reshape(targets, logits.shape), logits.dtype)  # (T, B, C)
    e = xp.exp(-xp.abs(logits))  # (T, B, C), in (0, 1]
    relu = (logits + xp.abs(logits)) / 2  # max(g, 0), exactly  (T, B, C)
    loss = relu - logits * y + xp.log1p(e)  # (T, B, C)
    yhat = xp.where(logits >= 0, 1 / (1 + e), e / (1 + e))  # stable sigm(g)  (T, B, C)
    return xp.sum(loss, axis=-1), yhat - y  # (T, B), (T, B, C)


def mean_squared_error(logits: Any, targets: Any, xp: Any) -> tuple[Any, Any]:
    """A linear output and the squared error against real targets (T, B, C) (eq. B18).

    L = sum_c (g - y)^2 per step and sequence, dL/dg = 2 (g - y); with the mean
    reduction this is torch's MSELoss (the mean over T, B and C).
    """
    y = xp.astype(xp.reshape(targets, logits.shape), logits.dtype)  # (T, B, C)
    residual = logits - y  # (T, B, C), a fresh array
    terms = xp.sum(residual * residual, axis=-1)  # (T, B)
    residual *= 2.0  # dL/dg, in place on the fresh array
    return terms, residual


HEADS = {"softmax": softmax_cross_entropy, "sigmoid": sigmoid_bce, "mse": mean_squared_error}

# Heads whose "mean" also averages over the C outputs (torch's BCEWithLogitsLoss, MSELoss).
PER_ELEMENT_MEAN = ("sigmoid", "mse")


def loss_weights(
    mask: Any, shape: tuple[int, int, int], *, head: str, reduction: str, dtype: Any, xp: Any
) -> Any:
    """What each step's loss counts for: a Python float, or (T, B) weights with a mask.

    ``shape`` is (T, B, C). ``"mean"`` divides by the number of unmasked steps (and
    by C for the sigmoid and mse heads, as torch's BCEWithLogitsLoss and MSELoss do);
    ``"sum"`` by 1.
    The count of a mask stays on the device: no sync.
    """
    T, B, C = shape
    per_element = C if head in PER_ELEMENT_MEAN else 1
    if mask is None:
        return 1.0 / (T * B * per_element) if reduction == "mean" else 1.0
    weight = xp.astype(mask, dtype)  # (T, B), 1 where a step counts
    if reduction == "mean":
        weight = weight / (xp.sum(weight) * per_element)  # a device scalar: no sync
    return weight


def reduce(terms: Any, dlogits: Any, weights: Any, xp: Any) -> tuple[Any, Any]:
    """The loss of a block of steps (0-d) and its dL/dg, from the head's per-step
    ``terms`` (n, B) and ``dlogits`` (n, B, C), updated in place. ``weights`` as from
    :func:`loss_weights` (a float, or the block's (n, B) rows). Eq. (B8): L = sum_t
    L_t, so the gradients of the steps add as in eqs. (71)-(73).
    """
    if isinstance(weights, float):
        dlogits *= weights
        return xp.sum(terms * weights), dlogits  # scaled first: a finite mean never overflows
    dlogits *= weights[..., None]
    return xp.sum(terms * weights), dlogits
