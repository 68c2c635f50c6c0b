"""Everything a run carries from one step to the next, in one record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["HISTORY_KEYS", "RunState"]

HISTORY_KEYS = ("train_step", "train_bpc", "val_step", "val_bpc")


def _history() -> dict[str, list[float]]:
    return {k: [] for k in HISTORY_KEYS}


def _best() -> dict[str, Any]:
    return {"best_val": None, "best_step": None, "evals_since": 0}


@dataclass
class RunState:
    """A run's state: device arrays (parameters, optimizer state, carried hidden
    state) and host bookkeeping (position in the data, generator, history, best).
    :func:`bptt.checkpoint.run_to_checkpoint` and ``run_from_checkpoint`` convert it."""

    params: dict[str, Any]  # {"U": (D, M), "W": (D, D), "V": (C, D)[, "b", "c"]}
    opt_state: Any  # the optimizer's state, as its init made it
    rng: np.random.Generator  # host: epoch offsets and dropout masks
    hidden: Any = None  # (B, D), carried from chunk to chunk
    step: int = 0  # updates done
    epoch: int = 0
    chunk: int = 0  # the next chunk of the epoch
    offset: int = -1  # where the epoch's streams start; -1: no epoch begun
    history: dict[str, list[float]] = field(default_factory=_history)
    best: dict[str, Any] = field(default_factory=_best)
