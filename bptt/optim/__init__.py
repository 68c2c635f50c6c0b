"""Optimizers as composable gradient transformations, in the manner of optax.

A :class:`GradientTransformation` is an ``init``/``update`` pair with explicit state::

    opt = bptt.optim.adam(2e-3, weight_decay=0.1)       # a chain of transforms
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)  # no host sync
    params = bptt.optim.apply_updates(params, updates)

The optimizers (:func:`sgd`, :func:`adagrad`, :func:`rmsprop`, :func:`adam`) are
chains of small transforms (:func:`clip_by_global_norm`, :func:`add_decayed_weights`,
:func:`trace`, :func:`scale_by_adam`, ..., :func:`scale_by_learning_rate`); build
others with :func:`chain`. Every constructor checks its arguments, and an
optimizer's ``update`` refuses gradients unlike the parameters. Parameters are a
mapping of named arrays or one flat array: an update costs a fixed number of array
operations per leaf.
"""

from __future__ import annotations

from ._alias import OPTIMIZERS, adagrad, adam, make, rmsprop, sgd
from ._base import EmptyState, GradientTransformation, apply_updates, chain, checked
from ._schedules import constant_schedule, exponential_decay
from ._serialize import state_arrays, state_from_arrays
from ._transforms import (
    ClipState,
    MomentsState,
    ScaleByAdamState,
    ScaleByRmsState,
    ScaleByRssState,
    ScheduleState,
    TraceState,
    add_decayed_weights,
    clip_by_global_norm,
    global_norm,
    last_norm,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_sum_of_squares,
    trace,
)

__all__ = [
    "OPTIMIZERS",
    "ClipState",
    "EmptyState",
    "GradientTransformation",
    "MomentsState",
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScheduleState",
    "TraceState",
    "adagrad",
    "adam",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "checked",
    "clip_by_global_norm",
    "constant_schedule",
    "exponential_decay",
    "global_norm",
    "last_norm",
    "make",
    "rmsprop",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_sum_of_squares",
    "sgd",
    "state_arrays",
    "state_from_arrays",
    "trace",
]
