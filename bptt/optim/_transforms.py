"""The building blocks: clipping, weight decay, momentum and the scaling rules.

Notation: u the incoming update (the gradient, for the first transform), p the
parameter, k the update count from 1, all operations elementwise. Counts and
scheduled rates are device scalars, so no update bakes in a host number that
changes from step to step, and none reads the device (no host sync).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ..backends import device_context
from ._base import EmptyState, GradientTransformation, number
from ._tree import Tree, check_shapes, device_scalar, namespace, tree_map, zeros_like

__all__ = [
    "ClipState",
    "MomentsState",
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScheduleState",
    "TraceState",
    "add_decayed_weights",
    "clip_by_global_norm",
    "global_norm",
    "last_norm",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_sum_of_squares",
    "trace",
]

Schedule = Callable[[Any], Any]  # a device count -> a device learning rate


class ClipState(NamedTuple):
    """The state of :func:`clip_by_global_norm`: the last global norm."""

    norm: Any  # 0-d: the global norm of the last updates clipped, before clipping


# Each transform has its own state, its fields named as optax names them: a field's name
# says what holds of its values (a checkpoint checks nu and sum_of_squares >= 0, counts whole).
class TraceState(NamedTuple):
    """The state of :func:`trace` (momentum): the velocity."""

    trace: Any  # tree: the velocity


class ScaleByRssState(NamedTuple):
    """The state of :func:`scale_by_sum_of_squares` (Adagrad)."""

    sum_of_squares: Any  # tree: the running sum of squared updates (>= 0)


class ScaleByRmsState(NamedTuple):
    """The state of :func:`scale_by_rms` (RMSProp)."""

    nu: Any  # tree: the running mean of squared updates (>= 0)


class ScaleByAdamState(NamedTuple):
    """The state of :func:`scale_by_adam`: the count and both moments."""

    count: Any  # 0-d device counter
    mu: Any  # tree: first moment
    nu: Any  # tree: second moment (>= 0)


MomentsState = ScaleByAdamState  # its earlier name
"""The earlier name of :class:`ScaleByAdamState`."""


class ScheduleState(NamedTuple):
    """The state of :func:`scale_by_learning_rate` with a schedule: the count."""

    count: Any  # 0-d device counter


def global_norm(tree: Tree) -> Any:
    """sqrt(sum of squares of every entry of every leaf), a 0-d device array."""
    xp = namespace(tree, "grads")
    leaves = list(tree.values()) if isinstance(tree, dict) else [tree]
    # sum(g * g), not a dot product: NumPy's dot wakes BLAS threads, which then spin
    # beside the next step's threads (40 ms a step at S2 float64, benchmarks/NOTES.md)
    squares = [xp.sum(g * g) for g in leaves]  # ()
    total = squares[0]
    for more in squares[1:]:  # no "0 +": one flat leaf costs one product and one sqrt
        total = total + more
    return xp.sqrt(total)


def last_norm(state: Any) -> Any:
    """The norm recorded by the first :func:`clip_by_global_norm` in a (chained) state."""
    if isinstance(state, ClipState):
        return state.norm
    for inner in state if isinstance(state, tuple) else ():
        found = last_norm(inner)
        if found is not None:
            return found
    return None


def clip_by_global_norm(max_norm: float | None) -> GradientTransformation:
    """u <- u min(1, max_norm / ||u||), ||u|| over all leaves; records ||u||.

    ``max_norm=None`` only records the norm (the same state, no clipping).
    """
    if max_norm is not None:
        max_norm = number("max_norm", max_norm, lambda v: v > 0, "a positive number or None")

    def init(params: Tree) -> ClipState:
        return ClipState(_zero_norm(params))

    def update(updates: Tree, state: ClipState, params: Tree = None) -> tuple[Tree, ClipState]:
        xp = namespace(updates, "grads")
        norm = global_norm(updates)  # (), device
        if max_norm is None:
            return updates, ClipState(norm)
        ratio = max_norm / (norm + 1e-12)
        factor = xp.minimum(ratio, xp.ones_like(ratio))  # no clip(): compat's syncs on CuPy
        return tree_map(lambda u: u * factor, updates), ClipState(norm)

    return GradientTransformation(init, update)


def _first(tree: Tree) -> Any:
    return next(iter(tree.values())) if isinstance(tree, dict) else tree


def _zero_norm(params: Tree) -> Any:
    leaf = _first(params)
    with device_context(leaf):
        return namespace(params).zeros((), dtype=leaf.dtype, device=leaf.device)


def add_decayed_weights(rate: float) -> GradientTransformation:
    """u <- u + rate p. Before a scaling rule it is an L2 penalty on the loss (coupled);
    after it, decoupled weight decay (AdamW's)."""
    rate = number("weight decay", rate, lambda v: v >= 0, "a number >= 0")

    def update(updates: Tree, state: EmptyState, params: Tree = None) -> tuple[Tree, Any]:
        if rate == 0:  # decided once: the same operations every step
            return updates, state
        if params is None:
            raise TypeError("update: params are required by add_decayed_weights")
        check_shapes(updates, params)
        return tree_map(lambda u, p: u + rate * p, updates, params), state

    return GradientTransformation(lambda params: EmptyState(), update)


def trace(momentum: float) -> GradientTransformation:
    """v <- momentum v + u;  u <- v  (heavy-ball momentum)."""
    momentum = number("momentum", momentum, lambda v: 0 <= v < 1, "a number in [0, 1)")

    def update(updates: Tree, state: TraceState, params: Tree = None) -> tuple[Tree, TraceState]:
        check_shapes(updates, state.trace, "the state")
        v = tree_map(lambda v, u: momentum * v + u, state.trace, updates)
        return v, TraceState(v)

    return GradientTransformation(lambda params: TraceState(zeros_like(params)), update)


def scale_by_sum_of_squares(eps: float) -> GradientTransformation:
    """G <- G + u^2;  u <- u / sqrt(G + eps)   (Adagrad)."""
    eps = number("eps", eps, lambda v: v > 0, "a positive number")

    def update(updates: Tree, state: ScaleByRssState, params: Tree = None) -> tuple[Tree, Any]:
        xp = namespace(updates, "grads")
        check_shapes(updates, state.sum_of_squares, "the state")
        total = tree_map(lambda s, u: s + u * u, state.sum_of_squares, updates)
        out = tree_map(lambda u, s: u / xp.sqrt(s + eps), updates, total)
        return out, ScaleByRssState(total)

    return GradientTransformation(lambda params: ScaleByRssState(zeros_like(params)), update)


def scale_by_rms(decay: float, eps: float) -> GradientTransformation:
    """E <- decay E + (1 - decay) u^2;  u <- u / (sqrt(E) + eps)   (RMSProp)."""
    decay = number("decay", decay, lambda v: 0 <= v < 1, "a number in [0, 1)")
    eps = number("eps", eps, lambda v: v > 0, "a positive number")

    def update(updates: Tree, state: ScaleByRmsState, params: Tree = None) -> tuple[Tree, Any]:
        xp = namespace(updates, "grads")
        check_shapes(updates, state.nu, "the state")
        mean = tree_map(lambda e, u: decay * e + (1 - decay) * (u * u), state.nu, updates)
        return tree_map(lambda u, e: u / (xp.sqrt(e) + eps), updates, mean), ScaleByRmsState(mean)

    return GradientTransformation(lambda params: ScaleByRmsState(zeros_like(params)), update)


def scale_by_adam(b1: float, b2: float, eps: float) -> GradientTransformation:
    """m <- b1 m + (1 - b1) u;  v <- b2 v + (1 - b2) u^2;
    u <- (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps)   (Adam's bias-corrected step)."""
    b1 = number("b1", b1, lambda v: 0 <= v < 1, "a number in [0, 1)")
    b2 = number("b2", b2, lambda v: 0 <= v < 1, "a number in [0, 1)")
    eps = number("eps", eps, lambda v: v > 0, "a positive number")

    def init(params: Tree) -> ScaleByAdamState:
        return ScaleByAdamState(device_scalar(params), zeros_like(params), zeros_like(params))

    def update(updates: Tree, state: ScaleByAdamState, params: Tree = None) -> tuple[Tree, Any]:
        xp = namespace(updates, "grads")
        check_shapes(updates, state.mu, "the state")
        k = state.count + 1  # (), device
        m = tree_map(lambda m, u: b1 * m + (1 - b1) * u, state.mu, updates)
        v = tree_map(lambda v, u: b2 * v + (1 - b2) * (u * u), state.nu, updates)
        k_ = xp.astype(k, _first(m).dtype)  # (), the count in the moments' dtype
        c1, c2 = 1 - b1**k_, 1 - b2**k_  # bias corrections, on the device  ()
        step = tree_map(lambda m, v: (m / c1) / (xp.sqrt(v / c2) + eps), m, v)
        return step, ScaleByAdamState(k, m, v)

    return GradientTransformation(init, update)


def scale_by_learning_rate(lr: float | Schedule) -> GradientTransformation:
    """u <- -lr_k u, with lr_k a constant or ``lr(count)`` for the count of earlier updates."""
    if not callable(lr):
        rate = number("lr", lr, lambda v: v > 0, "a positive learning rate")

        def update(updates: Tree, state: EmptyState, params: Tree = None) -> tuple[Tree, Any]:
            return tree_map(lambda u: (-rate) * u, updates), state

        return GradientTransformation(lambda params: EmptyState(), update)

    def scheduled(updates: Tree, state: ScheduleState, params: Tree = None) -> tuple[Tree, Any]:
        xp = namespace(updates, "grads")
        rate = -lr(state.count)  # (), device; a Python float for a constant schedule
        if hasattr(rate, "dtype"):  # (NumPy gives a NumPy scalar for a 0-d result)
            rate = xp.astype(rate, _first(updates).dtype)
        out = tree_map(lambda u: rate * u, updates)
        return out, ScheduleState(state.count + 1)

    return GradientTransformation(lambda params: ScheduleState(device_scalar(params)), scheduled)
