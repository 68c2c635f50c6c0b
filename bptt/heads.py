"""Output heads: per-step losses and their gradients with respect to the logits.

Both heads return ``(loss_terms, dlogits)``: the loss of every (t, b) pair,
shape (T, B), and dL_t/dg_t, shape (T, B, C), for an unweighted sum of losses.
The caller applies the mask and the reduction to both. Both are stable for
logits of any finite size: no exp overflow and no log(0).
"""

from __future__ import annotations

from typing import Any

from .model import one_hot

__all__ = ["HEADS", "sigmoid_bce", "softmax_cross_entropy"]


def softmax_cross_entropy(logits: Any, targets: Any, xp: Any) -> tuple[Any, Any]:
    """Softmax (eq. 22) and cross-entropy (eq. 23) against integer targets (T, B).

    L_t = logsumexp(g_t) - g_t[y_t], and dL_t/dg_t = yhat_t - y_t (eq. 44), with
    y_t the one-hot of the target.
    """
    T, B, C = logits.shape
    m = xp.max(logits, axis=-1, keepdims=True)  # (T, B, 1)
    e = xp.exp(logits - m)  # (T, B, C), every entry <= 1
    total = xp.sum(e, axis=-1, keepdims=True)  # (T, B, 1), >= 1
    y = xp.reshape(one_hot(xp.reshape(targets, (T * B,)), C, logits.dtype, xp), (T, B, C))
    picked = xp.sum(logits * y, axis=-1)  # g_t[y_t]  (T, B)
    loss = m[..., 0] + xp.log(total[..., 0]) - picked  # eq. (23) via log-sum-exp  (T, B)
    return loss, e / total - y  # eq. (44)


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


HEADS = {"softmax": softmax_cross_entropy, "sigmoid": sigmoid_bce}
