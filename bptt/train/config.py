"""The options of a training run, checked when they are made."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from typing import Any

from .. import optim
from ..api.params import INITS, dtype_name
from ..api.rnn import RNN
from ..math import remat
from ..math.cells import CELLS

__all__ = ["KINDS", "RESUMABLE", "Kind", "TrainConfig", "check_option", "option"]

# Options that may change when a run resumes (the rest fix the model and the data order).
RESUMABLE = (
    "lr",
    "clip",
    "l2",
    "weight_decay",
    "dropout",
    "lr_decay",
    "lr_decay_every",
    "log_every",
    "eval_every",
    "patience",
    "sample_length",
    "remat",  # the same gradients (to rounding), less memory: free to change
)  # val_streams and val_warmup are fixed: they define the validation "best" is judged on
"""The options of :class:`TrainConfig` a resumed run may change; the rest are fixed."""


@dataclass(frozen=True)
class Kind:
    """A kind of option value: what it must be, checked the same way wherever it is
    given (a :class:`TrainConfig` field, a command-line flag)."""

    cast: type  # int or float
    ok: Callable[[Any], bool]
    expected: str

    def valid(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.cast is int and not isinstance(value, int):
            return False
        return math.isfinite(value) and self.ok(value)

    def parse(self, text: str) -> Any:
        """A command-line string as this kind's value; ValueError naming what it expects."""
        try:
            value = self.cast(text)
        except ValueError:
            value = None
        if value is None or not self.valid(value):
            raise ValueError(f"expected {self.expected}; got {text!r}")
        return value


KINDS = {  # the value checks, one table
    "positive int": Kind(int, lambda v: v >= 1, "a positive integer"),
    "int >= 0": Kind(int, lambda v: v >= 0, "an integer >= 0"),  # seeds: NumPy refuses < 0
    "positive": Kind(float, lambda v: v > 0, "a positive number"),
    ">= 0": Kind(float, lambda v: v >= 0, "a number >= 0"),
    "probability": Kind(float, lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "factor": Kind(float, lambda v: 0 < v <= 1, "a factor in (0, 1]"),  # lr decay
    "fraction": Kind(float, lambda v: 0 < v < 1, "a number in (0, 1)"),  # held out
}


def option(default: Any, kind: str | tuple[str, ...] | Callable[[Any], Any], group: str,
           help: str, **cli: Any) -> Any:  # fmt: skip
    """A :class:`TrainConfig` field, declared once: its default, its kind (a key of
    ``KINDS``, a tuple of choices or a parser), its group and help; ``cli``: extra
    command-line settings (``aliases``, ``metavar``)."""
    return field(default=default, metadata={"kind": kind, "group": group, "help": help, **cli})


@dataclass
class TrainConfig:
    """Model and training options, each declared once (:func:`option`): the command
    line's ``bptt train`` flags are made from these fields, and every value is checked
    here, by its kind (``KINDS``), whichever way it came.

    ``weight_decay`` is decoupled (AdamW-style: p <- p - lr lambda p, for every
    optimizer); ``l2`` adds lambda p to the gradient (an L2 penalty on the loss).
    """

    hidden: int = option(256, "positive int", "model", "hidden units D")
    layers: int = option(1, "positive int", "model", "L stacked recurrent layers (one "
                         "direction: a next-character model reads the past); dropout also "
                         "acts between them")  # fmt: skip
    cell: str = option("tanh", tuple(CELLS), "model", "the recurrent cell of every layer",
                       aliases=("--nonlinearity",))  # fmt: skip
    seq_len: int = option(100, "positive int", "model", "T, characters per chunk")
    batch: int = option(64, "positive int", "model", "B, parallel streams")
    optimizer: str = option("adam", tuple(optim.OPTIMIZERS), "optimisation", "the optimizer")
    lr: float = option(2e-3, "positive", "optimisation", "learning rate. On a resume it "
                       "replaces the stored rate from the resumed step on (a decay schedule "
                       "continues from the global step; the optimizer's moments are kept) "
                       "and later checkpoints store it")  # fmt: skip
    momentum: float = option(0.0, "probability", "optimisation", "for sgd")
    clip: float = option(5.0, ">= 0", "optimisation", "global gradient norm; 0: off")
    l2: float = option(
        0.0,
        ">= 0",
        "optimisation",
        "L2 penalty: lambda p added to the gradient before the optimizer",
    )
    weight_decay: float = option(
        0.0, ">= 0", "optimisation", "decoupled weight decay, AdamW-style: p -= lr lambda p"
    )
    dropout: float = option(
        0.0, "probability", "optimisation", "on the states before V (and between stacked layers)"
    )
    lr_decay: float = option(
        1.0, "factor", "optimisation", "the learning rate is multiplied by this ..."
    )
    lr_decay_every: int = option(
        1000, "positive int", "optimisation", "... every this many steps (smoothly)"
    )
    dtype: str = option("float32", ("float32", "float64"), "model", "the parameters' dtype")
    init: str = option(
        "uniform", tuple(INITS), "model", "the initializer; identity: IRNN (W = init_scale I)"
    )
    init_scale: float = option(
        1.0, "positive", "model", "W's factor under init identity (IRNN) and orthogonal"
    )
    seed: int = option(0, "int >= 0", "model", "fixes init, stream order, dropout and samples")
    log_every: int = option(20, "positive int", "run", "read the loss every N steps")
    eval_every: int = option(200, "positive int", "run", "validate every N steps")
    patience: int | None = option(
        None, "positive int", "run", "stop after this many evaluations without a new best"
    )
    sample_length: int = option(200, "positive int", "run", "sample shown per evaluation")
    val_streams: int = option(16, "positive int", "run", "validation streams")
    val_warmup: int = option(
        100, "int >= 0", "run", "characters each validation stream reads before it is scored"
    )
    remat: int | str | None = option(
        None, remat.parse, "optimisation", "memory-bounded BPTT: store every K-th state, "
        "every ceil(sqrt T)-th (sqrt), or at most M states by Gruslys et al.'s dynamic "
        "program (budget:M); the backward pass recomputes the rest",
        metavar="K|sqrt|budget:M",
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.dtype = dtype_name(self.dtype)
        for f in fields(self):
            check_option(f, getattr(self, f.name))
        self.remat = remat.parse(self.remat)  # an int, "sqrt" or "budget:m" (JSON-ready)
        if isinstance(self.remat, remat.Budget):
            self.remat = f"budget:{self.remat.states}"

    def memory_bytes(self, M: int, C: int) -> int:
        """A lower bound of the memory one training step holds at once, in bytes: the
        parameters, their gradient, the optimizer's moments, one chunk's states (T+1, B, D)
        and its logits and probabilities (T, B, C)."""
        D, T, B = self.hidden, self.seq_len, self.batch
        model = RNN(M, D, C, cell=self.cell, layers=self.layers)
        n = sum(math.prod(shape) for shape in model.param_shapes().values())  # parameters
        slots = {"adam": 2, "rmsprop": 1, "adagrad": 1}.get(self.optimizer, int(self.momentum > 0))
        itemsize = 8 if self.dtype == "float64" else 4
        return itemsize * ((2 + slots) * n + (T + 1) * B * D + 2 * T * B * C)

    def model(self, vocab_size: int) -> RNN:
        """The model this run trains on a vocabulary of ``vocab_size`` characters."""
        return RNN(vocab_size, self.hidden, vocab_size, cell=self.cell, layers=self.layers,
                   initializer=self.init, init_scale=self.init_scale)  # fmt: skip

    def make_optimizer(self) -> optim.GradientTransformation:
        """Global-norm clipping (``clip`` 0: the norm only recorded), then the optimizer.

        The state has one shape whatever the resumable options (clip, decays, rate).
        """
        lr: Any = optim.constant_schedule(self.lr)
        if self.lr_decay < 1.0:
            lr = optim.exponential_decay(self.lr, rate=self.lr_decay, every=self.lr_decay_every)
        opts: dict[str, Any] = {"l2": self.l2, "weight_decay": self.weight_decay}
        if self.optimizer == "sgd":
            opts["momentum"] = self.momentum
        clip = optim.clip_by_global_norm(self.clip if self.clip > 0 else None)
        return optim.checked(optim.chain(clip, optim.make(self.optimizer, lr, **opts)))

    @classmethod
    def from_stored(cls, stored: dict[str, Any], **overrides: Any) -> TrainConfig:
        """A config as a checkpoint stored it, with ``overrides``; a format-1 run's
        ``weight_decay`` for sgd, adagrad and rmsprop was an L2 penalty: it becomes ``l2``."""
        stored = dict(stored)
        if "nonlinearity" in stored:  # format 2 named the cell by its nonlinearity
            stored["cell"] = stored.pop("nonlinearity")
        if "l2" not in stored and stored.get("optimizer") != "adam":
            stored["l2"], stored["weight_decay"] = stored.get("weight_decay", 0.0), 0.0
        if stored.get("patience") is not None:
            stored["patience"] = int(stored["patience"])
        return cls(**{**stored, **overrides})


def check_option(f: Field, value: Any) -> None:
    """ValueError naming the field unless ``value`` is of its kind (None: only where
    the default is None)."""
    kind = f.metadata["kind"]
    if value is None and f.default is None:
        return
    if isinstance(kind, tuple):
        if value not in kind:
            raise ValueError(f"{f.name}: expected one of {list(kind)}; got {value!r}")
    elif isinstance(kind, str):
        if not KINDS[kind].valid(value):
            raise ValueError(f"{f.name}: expected {KINDS[kind].expected}; got {value!r}")
    else:
        kind(value)  # a parser (remat.parse): it raises, naming the field
