"""Chunked, stateful truncated BPTT for a character-level RNN, on any backend.

The training text is cut into B parallel streams (:class:`bptt.text.data.Streams`);
each step takes the next T characters of every stream, starts from the hidden
state the previous chunk ended with (carried as ``h0``, no gradient across the
boundary) and updates the parameters once. The state is reset at the start of
each epoch. Full BPTT over a whole sequence is the special case of one chunk.

The parts, one job each: :mod:`.config` (the options), :mod:`.state` (the run
state, saved by :mod:`.checkpoint`), :mod:`.step` (the training step as one
pure function), :mod:`.feed` (the data on the device), :mod:`.loop` and
:mod:`.run` (the loop, logging, validation, samples, checkpoints).

>>> from bptt import data, train
>>> corpus = data.load_corpus()
>>> trainer = train.Trainer.create(corpus, train.TrainConfig(hidden=32, batch=8, seq_len=20))
>>> result = trainer.run(steps=10)  # doctest: +SKIP
"""

from __future__ import annotations

from ..text.validation import evaluate, layout_validation
from .config import RESUMABLE, TrainConfig
from .feed import EpochFeed
from .loop import NonFiniteError, Reporter, Trainer, TrainResult
from .state import HISTORY_KEYS, RunState
from .step import Tally, TrainCarry, make_train_step

__all__ = [
    "HISTORY_KEYS",
    "RESUMABLE",
    "EpochFeed",
    "NonFiniteError",
    "Reporter",
    "RunState",
    "Tally",
    "TrainCarry",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "evaluate",
    "layout_validation",
    "make_train_step",
]
