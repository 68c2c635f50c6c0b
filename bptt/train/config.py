"""The options of a training run, checked when they are made."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import optim
from ..api.params import INITS, dtype_name
from ..api.rnn import RNN
from ..math import remat
from ..math.cells import CELLS

__all__ = ["RESUMABLE", "TrainConfig"]

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


@dataclass
class TrainConfig:
    """Model and training options. ``clip <= 0`` disables clipping.

    ``weight_decay`` is decoupled (AdamW-style: p <- p - lr lambda p, for every
    optimizer); ``l2`` adds lambda p to the gradient (an L2 penalty on the loss).
    """

    hidden: int = 256  # D
    layers: int = 1  # L stacked layers (one direction: a next-character model reads the past)
    cell: str = "tanh"  # the recurrent cell (bptt.math.cells.CELLS)
    seq_len: int = 100  # T
    batch: int = 64  # B
    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.0  # sgd only
    clip: float = 5.0
    l2: float = 0.0
    weight_decay: float = 0.0
    dropout: float = 0.0  # on the states before V
    lr_decay: float = 1.0  # the learning rate is multiplied by this ...
    lr_decay_every: int = 1000  # ... every this many steps (smoothly)
    dtype: str = "float32"
    init: str = "uniform"  # bptt.api.params.INITS
    init_scale: float = 1.0  # W's factor under init "identity" (IRNN) and "orthogonal"
    seed: int = 0
    log_every: int = 20
    eval_every: int = 200
    patience: int | None = None  # stop after this many evaluations without a new best
    sample_length: int = 200
    val_streams: int = 16
    val_warmup: int = 100
    remat: int | str | None = None  # memory-bounded BPTT: k, "sqrt", "budget:m" (bptt.math.remat)

    def __post_init__(self) -> None:
        self.dtype = dtype_name(self.dtype)
        positive = ("hidden", "layers", "seq_len", "batch", "log_every", "eval_every",
                    "lr_decay_every")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer; got {value!r}")
        _real("lr", self.lr, lambda v: v > 0, "a positive learning rate")
        _real("dropout", self.dropout, lambda v: 0 <= v < 1, "a probability in [0, 1)")
        for name in ("l2", "weight_decay"):
            _real(name, getattr(self, name), lambda v: v >= 0, "a number >= 0")
        _real("lr_decay", self.lr_decay, lambda v: 0 < v <= 1, "a factor in (0, 1]")
        _real("momentum", self.momentum, lambda v: 0 <= v < 1, "a number in [0, 1)")
        _real("clip", self.clip, lambda v: v >= 0, "a number >= 0 (0: no clipping)")
        _real("init_scale", self.init_scale, lambda v: v > 0, "a positive number")
        for name in ("sample_length", "val_streams"):
            if not _whole(getattr(self, name), 1):
                raise ValueError(
                    f"{name}: expected a positive integer; got {getattr(self, name)!r}"
                )
        for name in ("val_warmup", "seed"):
            if not _whole(getattr(self, name), 0):
                raise ValueError(f"{name}: expected an integer >= 0; got {getattr(self, name)!r}")
        self.remat = remat.parse(self.remat)  # an int, "sqrt" or "budget:m" (JSON-ready)
        if isinstance(self.remat, remat.Budget):
            self.remat = f"budget:{self.remat.states}"
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {list(INITS)}; got {self.init!r}")
        if self.cell not in CELLS:
            raise ValueError(f"cell: expected one of {list(CELLS)}; got {self.cell!r}")
        if self.optimizer not in optim.OPTIMIZERS:
            raise ValueError(
                f"optimizer: expected one of {list(optim.OPTIMIZERS)}; got {self.optimizer!r}"
            )
        if self.patience is not None and (
            isinstance(self.patience, bool) or not isinstance(self.patience, int)
            or self.patience < 1
        ):  # fmt: skip
            raise ValueError(f"patience: expected a positive integer; got {self.patience!r}")

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


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _real(name: str, value: Any, ok: Any, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected {expected}; got {value!r}")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name}: expected {expected}; got {value!r}")
