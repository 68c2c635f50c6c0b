"""Everything a run carries from one step to the next, in one record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..math.flat import Layout
from .step import TrainCarry

__all__ = ["HISTORY_KEYS", "RunState"]

HISTORY_KEYS = ("train_step", "train_bpc", "val_step", "val_bpc")


def _history() -> dict[str, list[float]]:
    return {k: [] for k in HISTORY_KEYS}


def _best() -> dict[str, Any]:
    return {"best_val": None, "best_step": None, "evals_since": 0}


@dataclass
class RunState:
    """A run's state: the device side (:class:`TrainCarry`: flat parameters, optimizer
    state, carried hidden state, step counter) and the host side (position in the
    data, generator, history, best). :func:`bptt.train.checkpoint.run_to_checkpoint` and
    ``run_from_checkpoint`` convert it, parameter by parameter."""

    carry: TrainCarry
    layout: Layout  # how carry.params holds the named parameters
    rng: np.random.Generator  # host: epoch offsets
    step: int = 0  # updates done (carry.step holds the same count on the device)
    epoch: int = 0
    chunk: int = 0  # the next chunk of the epoch
    offset: int = -1  # where the epoch's streams start; -1: no epoch begun
    history: dict[str, list[float]] = field(default_factory=_history)
    best: dict[str, Any] = field(default_factory=_best)
