"""The optimizers, each a chain of the transforms in :mod:`bptt.optim._transforms`.

Two kinds of weight decay, named apart: ``l2`` adds lambda p to the gradient before
the optimizer's scaling (an L2 penalty on the loss, coupled to that scaling), and
``weight_decay`` adds it after the scaling, before the learning rate (decoupled, as
in AdamW): p <- p - lr_k (u + lambda p). For plain SGD the two coincide.
"""

from __future__ import annotations

from typing import Any

from ._base import GradientTransformation, chain, checked, number
from ._transforms import (
    Schedule,
    add_decayed_weights,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_sum_of_squares,
    trace,
)

__all__ = ["OPTIMIZERS", "adagrad", "adam", "make", "rmsprop", "sgd"]


def _optimizer(
    scaling: list[GradientTransformation], lr: float | Schedule, l2: float, weight_decay: float
) -> GradientTransformation:
    for name, value in (("l2", l2), ("weight_decay", weight_decay)):
        number(name, value, lambda v: v >= 0, "a number >= 0")
    # both decays always in the chain (a zero one does nothing): the state keeps one
    # shape whatever the rates, so a run can resume with other rates
    parts = [add_decayed_weights(l2), *scaling, add_decayed_weights(weight_decay)]
    return checked(chain(*parts, scale_by_learning_rate(lr)))


def sgd(
    lr: float | Schedule, *, momentum: float = 0.0, l2: float = 0.0, weight_decay: float = 0.0
) -> GradientTransformation:
    """v <- momentum v + g;  p <- p - lr_k v   (plain SGD when momentum = 0)."""
    return _optimizer([trace(momentum)] if momentum else [], lr, l2, weight_decay)


def adagrad(
    lr: float | Schedule, *, eps: float = 1e-8, l2: float = 0.0, weight_decay: float = 0.0
) -> GradientTransformation:
    """G <- G + g^2;  p <- p - lr_k g / sqrt(G + eps)   (min-char-rnn's update)."""
    return _optimizer([scale_by_sum_of_squares(eps)], lr, l2, weight_decay)


def rmsprop(
    lr: float | Schedule,
    *,
    decay: float = 0.9,
    eps: float = 1e-8,
    l2: float = 0.0,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """E <- decay E + (1 - decay) g^2;  p <- p - lr_k g / (sqrt(E) + eps)."""
    return _optimizer([scale_by_rms(decay, eps)], lr, l2, weight_decay)


def adam(
    lr: float | Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    l2: float = 0.0,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """Adam, and AdamW with ``weight_decay``; k counts updates from 1::

    m <- b1 m + (1 - b1) g            v <- b2 v + (1 - b2) g^2
    p <- p - lr_k ((m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps) + lambda p)
    """
    return _optimizer([scale_by_adam(b1, b2, eps)], lr, l2, weight_decay)


OPTIMIZERS = {"sgd": sgd, "adagrad": adagrad, "rmsprop": rmsprop, "adam": adam}
"""The optimizers by the name ``bptt train --optimizer`` takes (:func:`make` builds one)."""


def make(name: str, lr: float | Schedule, **options: Any) -> GradientTransformation:
    """An optimizer by name: ``make("adam", 2e-3, weight_decay=1e-4)``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {list(OPTIMIZERS)}; got {name!r}")
    return OPTIMIZERS[name](lr, **options)
