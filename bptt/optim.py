"""Optimizers as small ``init``/``update`` pairs with explicit state.

Written against the array API: the state lives on the parameters' device, and
no update converts an array to a Python number (no host sync). Each update is
``params, state = opt.update(params, grads, state)``; ``state["step"]`` is a
host-side Python int, so schedules need no device data.

Notation: g the gradient, lr_k the learning rate at step k (a float or a
schedule ``lr(step)``), lambda the weight decay, all operations elementwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ._array_api import namespace_of

__all__ = [
    "OPTIMIZERS",
    "Optimizer",
    "adagrad",
    "adam",
    "clip_by_global_norm",
    "exponential_decay",
    "global_norm",
    "make",
    "rmsprop",
    "sgd",
]

Schedule = Callable[[int], float]


class Optimizer(NamedTuple):
    init: Callable[[Mapping[str, Any]], dict[str, Any]]
    update: Callable[
        [Mapping[str, Any], Mapping[str, Any], dict[str, Any]],
        tuple[dict[str, Any], dict[str, Any]],
    ]


def _lr(lr: float | Schedule, step: int) -> float:
    return lr(step) if callable(lr) else lr


def _zeros_like(params: Mapping[str, Any]) -> dict[str, Any]:
    xp, _ = namespace_of(params)
    return {k: xp.zeros_like(v) for k, v in params.items()}


def exponential_decay(lr: float, *, rate: float, every: int) -> Schedule:
    """lr_k = lr * rate^(k / every): multiply by ``rate`` every ``every`` steps, smoothly."""
    return lambda step: lr * rate ** (step / every)


def global_norm(grads: Mapping[str, Any]) -> Any:
    """sqrt(sum of squares of every entry of every gradient), a 0-d device array."""
    xp, _ = namespace_of(grads)
    return xp.sqrt(sum(xp.sum(g * g) for g in grads.values()))


def clip_by_global_norm(grads: Mapping[str, Any], max_norm: float) -> tuple[dict[str, Any], Any]:
    """Scale all gradients by min(1, max_norm / ||g||); returns (clipped, ||g|| before).

    No host sync: the factor is computed on the device.
    """
    xp, _ = namespace_of(grads)
    norm = global_norm(grads)
    factor = xp.clip(max_norm / (norm + 1e-12), max=1.0)
    return {k: g * factor for k, g in grads.items()}, norm


def sgd(lr: float | Schedule, *, momentum: float = 0.0, weight_decay: float = 0.0) -> Optimizer:
    """v <- mu v + g + lambda p;  p <- p - lr_k v   (plain SGD when mu = 0)."""

    def init(params: Mapping[str, Any]) -> dict[str, Any]:
        return {"step": 0, "velocity": _zeros_like(params) if momentum else {}}

    def update(params, grads, state):
        rate = _lr(lr, state["step"])
        new_p, new_v = {}, {}
        for k, p in params.items():
            d = grads[k] + weight_decay * p if weight_decay else grads[k]
            if momentum:
                d = new_v[k] = momentum * state["velocity"][k] + d
            new_p[k] = p - rate * d
        return new_p, {"step": state["step"] + 1, "velocity": new_v}

    return Optimizer(init, update)


def adagrad(lr: float | Schedule, *, eps: float = 1e-8, weight_decay: float = 0.0) -> Optimizer:
    """G <- G + g^2;  p <- p - lr_k g / sqrt(G + eps)   (min-char-rnn's update)."""

    def init(params: Mapping[str, Any]) -> dict[str, Any]:
        return {"step": 0, "sum_sq": _zeros_like(params)}

    def update(params, grads, state):
        xp, _ = namespace_of(params)
        rate = _lr(lr, state["step"])
        new_p, new_g = {}, {}
        for k, p in params.items():
            g = grads[k] + weight_decay * p if weight_decay else grads[k]
            new_g[k] = state["sum_sq"][k] + g * g
            new_p[k] = p - rate * g / xp.sqrt(new_g[k] + eps)
        return new_p, {"step": state["step"] + 1, "sum_sq": new_g}

    return Optimizer(init, update)


def rmsprop(
    lr: float | Schedule, *, decay: float = 0.9, eps: float = 1e-8, weight_decay: float = 0.0
) -> Optimizer:
    """E <- rho E + (1 - rho) g^2;  p <- p - lr_k g / (sqrt(E) + eps)."""

    def init(params: Mapping[str, Any]) -> dict[str, Any]:
        return {"step": 0, "mean_sq": _zeros_like(params)}

    def update(params, grads, state):
        xp, _ = namespace_of(params)
        rate = _lr(lr, state["step"])
        new_p, new_e = {}, {}
        for k, p in params.items():
            g = grads[k] + weight_decay * p if weight_decay else grads[k]
            new_e[k] = decay * state["mean_sq"][k] + (1 - decay) * (g * g)
            new_p[k] = p - rate * g / (xp.sqrt(new_e[k]) + eps)
        return new_p, {"step": state["step"] + 1, "mean_sq": new_e}

    return Optimizer(init, update)


def adam(
    lr: float | Schedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Adam with decoupled weight decay (AdamW); k counts from 1::

    m <- b1 m + (1 - b1) g            v <- b2 v + (1 - b2) g^2
    p <- p - lr_k (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps) - lr_k lambda p
    """

    def init(params: Mapping[str, Any]) -> dict[str, Any]:
        return {"step": 0, "m": _zeros_like(params), "v": _zeros_like(params)}

    def update(params, grads, state):
        xp, _ = namespace_of(params)
        k = state["step"] + 1
        rate = _lr(lr, state["step"])
        c1, c2 = 1 - b1**k, 1 - b2**k  # bias corrections, host floats
        new_p, new_m, new_v = {}, {}, {}
        for key, p in params.items():
            g = grads[key]
            new_m[key] = b1 * state["m"][key] + (1 - b1) * g
            new_v[key] = b2 * state["v"][key] + (1 - b2) * (g * g)
            step = (rate / c1) * new_m[key] / (xp.sqrt(new_v[key] / c2) + eps)
            new_p[key] = p - step - (rate * weight_decay) * p if weight_decay else p - step
        return new_p, {"step": k, "m": new_m, "v": new_v}

    return Optimizer(init, update)


OPTIMIZERS = {"sgd": sgd, "adagrad": adagrad, "rmsprop": rmsprop, "adam": adam}


def make(name: str, lr: float | Schedule, **options: Any) -> Optimizer:
    """An optimizer by name: ``make("adam", 2e-3, weight_decay=1e-4)``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {list(OPTIMIZERS)}; got {name!r}")
    if not callable(lr) and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a positive learning rate; got {lr!r}")
    return OPTIMIZERS[name](lr, **options)
