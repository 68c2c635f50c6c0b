"""Chunked, stateful truncated BPTT for a character-level RNN, on any backend.

The training text is cut into B parallel streams (:class:`bptt.data.Streams`);
each step takes the next T characters of every stream, starts from the hidden
state the previous chunk ended with (carried as ``h0``, no gradient across the
boundary) and updates the parameters once. The state is reset at the start of
each epoch. Full BPTT over a whole sequence is the special case of one chunk.

No step synchronises with the device: the loss is summed on the device and
read every ``log_every`` steps; a NaN or infinite loss or gradient norm is
recorded on the device (how many steps were good before the first bad one) and
read at the same time, so the message still names the first bad step.
Checkpoints are never written from non-finite parameters.

Randomness on the host, from one seeded NumPy generator (saved in checkpoints):
the epoch offsets and the dropout masks, drawn on the host and then moved, so a
seed reproduces a run on every backend.

>>> from bptt import data, train
>>> corpus = data.load_corpus()
>>> trainer = train.Trainer.create(corpus, train.TrainConfig(hidden=32, batch=8, seq_len=20))
>>> result = trainer.run(steps=10)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import backends, optim
from .api import loss_and_grad
from .checkpoint import (
    BEST,
    LATEST,
    Checkpoint,
    CheckpointError,
    check_writable,
    save_checkpoint,
)
from .data import Corpus, Streams
from .params import dtype_name, init_params
from .sample import sample
from .validation import evaluate, layout_validation

__all__ = [
    "NonFiniteError",
    "Reporter",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "dropout_mask",
    "evaluate",
    "layout_validation",
]

LN2 = math.log(2.0)
HISTORY_KEYS = ("train_step", "train_bpc", "val_step", "val_bpc")


class NonFiniteError(FloatingPointError):
    """The loss or gradient became NaN or infinite; ``step`` is the first bad step."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


@dataclass
class TrainConfig:
    """Model and training options. ``clip <= 0`` disables clipping."""

    hidden: int = 256  # D
    seq_len: int = 100  # T
    batch: int = 64  # B
    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.0  # sgd only
    clip: float = 5.0
    weight_decay: float = 0.0
    dropout: float = 0.0  # on the states before V
    lr_decay: float = 1.0  # the learning rate is multiplied by this ...
    lr_decay_every: int = 1000  # ... every this many steps (smoothly)
    dtype: str = "float32"
    init: str = "uniform"
    seed: int = 0
    log_every: int = 20
    eval_every: int = 200
    patience: int | None = None  # stop after this many evaluations without a new best
    sample_length: int = 200
    val_streams: int = 16
    val_warmup: int = 100

    def __post_init__(self) -> None:
        self.dtype = dtype_name(self.dtype)
        positive = ("hidden", "seq_len", "batch", "log_every", "eval_every", "lr_decay_every")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer; got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected a positive learning rate; got {self.lr!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1); got {self.dropout!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay: expected a number >= 0; got {self.weight_decay!r}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay: expected a factor in (0, 1]; got {self.lr_decay!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum: expected a number in [0, 1); got {self.momentum!r}")
        if self.optimizer not in optim.OPTIMIZERS:
            raise ValueError(
                f"optimizer: expected one of {list(optim.OPTIMIZERS)}; got {self.optimizer!r}"
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience: expected a positive integer; got {self.patience!r}")

    def make_optimizer(self) -> optim.Optimizer:
        lr: Any = self.lr
        if self.lr_decay < 1.0:
            lr = optim.exponential_decay(self.lr, rate=self.lr_decay, every=self.lr_decay_every)
        opts: dict[str, Any] = {"weight_decay": self.weight_decay}
        if self.optimizer == "sgd":
            opts["momentum"] = self.momentum
        return optim.make(self.optimizer, lr, **opts)


# Options that may change when a run resumes (the rest fix the model and the data order).
RESUMABLE = (
    "lr",
    "clip",
    "weight_decay",
    "dropout",
    "lr_decay",
    "lr_decay_every",
    "log_every",
    "eval_every",
    "patience",
    "sample_length",
    "val_streams",
    "val_warmup",
)


@dataclass
class TrainResult:
    """How a call to :meth:`Trainer.run` ended."""

    step: int
    reason: str  # "steps", "time", "early_stop" or "interrupted"
    last_val: float | None  # bits per character
    best_val: float | None
    best_step: int | None
    latest: Path | None  # checkpoint paths, None without a checkpoint directory
    best: Path | None


class Reporter:
    """Progress callbacks; the default does nothing. The CLI's draws a tqdm bar."""

    def on_log(self, step: int, bpc: float, chars_per_s: float) -> None:
        """Every ``log_every`` steps: mean training bits/char since the last log."""

    def on_eval(self, step: int, val_bpc: float, is_best: bool, text: str) -> None:
        """After each validation, with a short sample."""

    def on_step(self, step: int) -> None:
        """After every step (host-only work: never read device data here)."""


def dropout_mask(
    rng: np.random.Generator, shape: tuple[int, ...], p: float, *, backend: Any, dtype: str
) -> Any:
    """Inverted-dropout multipliers, 0 or 1/(1 - p), of ``shape`` (T, B, D), on the device.

    Drawn on the host from ``rng`` (float32 uniforms, kept where >= p) and moved as
    booleans, so the same generator state gives the same mask on every backend.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a dropout probability in [0, 1); got {p!r}")
    keep = rng.random(shape, dtype=np.float32) >= p  # (T, B, D) bool, host
    xp = backend.xp
    return xp.astype(backend.asarray(keep), getattr(xp, dtype)) * (1.0 / (1.0 - p))


def _model_config(M: int, config: TrainConfig) -> dict[str, Any]:
    return {"M": M, "D": config.hidden, "C": M, "dtype": config.dtype, "init": config.init}


@dataclass
class Trainer:
    """A training run: parameters, optimizer state and data position on one device.

    Build it with :meth:`create` (new parameters) or :meth:`resume` (from a
    checkpoint), then call :meth:`run`.
    """

    corpus: Corpus
    config: TrainConfig
    backend: Any
    params: dict[str, Any]
    opt_state: dict[str, Any]
    rng: np.random.Generator
    checkpoint_dir: Path | None = None
    step: int = 0
    epoch: int = 0
    chunk: int = 0
    offset: int = -1
    hidden: Any = None  # (B, D) carried state
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    best: dict[str, Any] = field(
        default_factory=lambda: {"best_val": None, "best_step": None, "evals_since": 0}
    )

    def __post_init__(self) -> None:
        self.failed_step: int | None = None  # set when a non-finite loss is found
        c, be = self.config, self.backend
        self.corpus.check_fits(batch=c.batch, seq_len=c.seq_len)
        if not be.supports(c.dtype):
            raise ValueError(
                f"dtype: {c.dtype} is not supported on {be.name} device {be.device!r}; "
                "use 'float32'"
            )
        self.streams = Streams(len(self.corpus.train), c.batch, c.seq_len)
        self.optimizer = c.make_optimizer()
        self._train_ids = be.asarray(self.corpus.train)  # (N,) int64, moved once
        self._val = layout_validation(
            self.corpus.val,
            streams=c.val_streams,
            warmup=c.val_warmup,
            backend=be,
            dtype=c.dtype,
        )
        self._dtype = getattr(be.xp, c.dtype)
        if self.offset < 0:
            self._begin_epoch(None)
        else:
            self._epoch_ids = self._layout_epoch(self.offset)

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        corpus: Corpus,
        config: TrainConfig,
        *,
        backend: Any = None,
        checkpoint_dir: str | Path | None = None,
    ) -> Trainer:
        """A new run: parameters from ``config.seed`` (see :func:`bptt.init_params`)."""
        be = backend if isinstance(backend, backends.Backend) else backends.get_backend(backend)
        M = len(corpus.vocab)
        with be.activate():  # CuPy: allocate on this GPU, not the current one
            params = init_params(
                M,
                config.hidden,
                M,
                dtype=config.dtype,
                seed=config.seed,
                init=config.init,
                backend=be.name,
                device=be.device,
            )
            opt_state = config.make_optimizer().init(params)
            rng = np.random.default_rng([config.seed, 1])  # apart from init's stream
            ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
            return cls(corpus, config, be, params, opt_state, rng, ckpt_dir)

    @classmethod
    def resume(
        cls,
        ckpt: Checkpoint,
        corpus: Corpus,
        *,
        backend: Any = None,
        checkpoint_dir: str | Path | None = None,
        **overrides: Any,
    ) -> Trainer:
        """Continue the run saved in ``ckpt`` on ``backend``; ``overrides`` from RESUMABLE.

        An overridden ``lr`` replaces the stored base rate from the resumed step on:
        the optimizer's moments and step count are kept, a ``lr_decay`` schedule
        continues from the global step (lr_k = lr * lr_decay^(k / lr_decay_every)),
        and later checkpoints store the new rate. This is how a run that diverged
        (:class:`NonFiniteError`) continues from its last checkpoint.
        """
        if ckpt.vocab != corpus.vocab.chars:
            raise CheckpointError(
                f"checkpoint: its vocabulary ({len(ckpt.vocab)} characters) differs from "
                f"that of {corpus.source} ({len(corpus.vocab)}); resume on the same text"
            )
        data = ckpt.config.get("data", {})
        if data.get("sha256") not in (None, corpus.sha256):
            raise CheckpointError(
                f"checkpoint: it was trained on {data.get('source')!r}, whose contents differ "
                f"from {corpus.source}; resume on the same text"
            )
        bad = [k for k in overrides if k not in RESUMABLE]
        if bad:
            raise ValueError(f"resume: {bad} cannot change when resuming; only {list(RESUMABLE)}")
        stored = dict(ckpt.config["train"])
        if stored.get("patience") is not None:
            stored["patience"] = int(stored["patience"])
        config = TrainConfig(**{**stored, **overrides})
        ckpt.check_sizes(M=len(corpus.vocab), D=config.hidden)
        be = backend if isinstance(backend, backends.Backend) else backends.get_backend(backend)
        dtype = config.dtype
        if not be.supports(dtype):
            raise ValueError(f"dtype: the checkpoint is {dtype}, which {be.name} lacks here")
        with be.activate():  # CuPy: this GPU current while building the run
            params = {k: be.asarray(v, dtype=dtype) for k, v in ckpt.params.items()}
            opt_state: dict[str, Any] = {}
            for slot, value in ckpt.opt_state.items():
                if isinstance(value, dict):
                    opt_state[slot] = {k: be.asarray(v, dtype=dtype) for k, v in value.items()}
                else:
                    opt_state[slot] = value
            rng = np.random.default_rng()
            rng.bit_generator.state = ckpt.rng_state
            history = {k: [float(x) for x in ckpt.history.get(k, ())] for k in HISTORY_KEYS}
            ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
            trainer = cls(
                corpus,
                config,
                be,
                params,
                opt_state,
                rng,
                ckpt_dir,
                step=ckpt.step,
                epoch=int(ckpt.position["epoch"]),
                chunk=int(ckpt.position["chunk"]),
                offset=int(ckpt.position["offset"]),
                history=history,
                best=dict(ckpt.best),
            )
            if ckpt.hidden is not None:
                trainer.hidden = be.asarray(ckpt.hidden, dtype=dtype)
            return trainer

    # ---- data ---------------------------------------------------------------------------

    def _layout_epoch(self, offset: int) -> Any:
        """The epoch's streams as one time-major device array (chunks*T + 1, B)."""
        xp, s = self.backend.xp, self.streams
        start, stop = s.epoch_slice(offset)
        used = s.chunks * s.seq_len + 1
        E = xp.reshape(self._train_ids[start:stop], (s.batch, s.stream_length))  # (B, L)
        return xp.permute_dims(E[:, :used], (1, 0))  # (chunks*T + 1, B)

    def _begin_epoch(self, offset: int | None) -> None:
        if offset is None:
            offset = int(self.rng.integers(0, self.config.seq_len))
        self.offset = offset
        self.chunk = 0
        self._epoch_ids = self._layout_epoch(offset)
        c = self.config
        xp = self.backend.xp
        self.hidden = xp.zeros((c.batch, c.hidden), dtype=self._dtype, device=self.backend.device)

    # ---- one step -----------------------------------------------------------------------

    def _step(self, *, check_values: bool) -> tuple[Any, Any]:
        """One update on the next chunk. Returns the loss and gradient norm (0-d, device)."""
        c, T = self.config, self.config.seq_len
        k = self.chunk
        x = self._epoch_ids[k * T : (k + 1) * T, ...]  # (T, B) inputs
        y = self._epoch_ids[k * T + 1 : (k + 1) * T + 1, ...]  # (T, B) next characters
        keep = None
        if c.dropout > 0:
            shape = (T, c.batch, c.hidden)
            keep = dropout_mask(self.rng, shape, c.dropout, backend=self.backend, dtype=c.dtype)
        loss, grads, h = loss_and_grad(
            self.params, x, y, h0=self.hidden, dropout_mask=keep, check_values=check_values
        )
        if c.clip > 0:
            grads, norm = optim.clip_by_global_norm(grads, c.clip)
        else:
            norm = optim.global_norm(grads)
        self.params, self.opt_state = self.optimizer.update(self.params, grads, self.opt_state)
        self.hidden = h  # carried, no gradient across the boundary
        self.step += 1
        self.chunk += 1
        if self.chunk == self.streams.chunks:
            self.epoch += 1
            self._begin_epoch(None)  # reset the state at the end of the data
        return loss, norm

    # ---- checks that read the device (only every log_every steps) ------------------------

    def params_finite(self) -> bool:
        xp = self.backend.xp
        flags = xp.stack([xp.all(xp.isfinite(p)) for p in self.params.values()])
        return bool(np.all(self.backend.to_numpy(flags)))

    # ---- checkpoints --------------------------------------------------------------------

    def checkpoint_bytes(self) -> int:
        """About the size of one checkpoint file: parameters, optimizer slots, state."""
        itemsize = 8 if self.config.dtype == "float64" else 4
        n = sum(math.prod(p.shape) for p in self.params.values())
        slots = sum(1 for v in self.opt_state.values() if isinstance(v, dict) and v)
        hidden = self.config.batch * self.config.hidden
        return itemsize * (n * (1 + slots) + hidden) + 65536  # + history and metadata

    def checkpoint(self) -> Checkpoint:
        """Host copy of the whole run state."""
        be = self.backend
        params = {k: be.to_numpy(v) for k, v in self.params.items()}
        opt_state: dict[str, Any] = {}
        for slot, value in self.opt_state.items():
            is_dict = isinstance(value, dict)
            opt_state[slot] = {k: be.to_numpy(v) for k, v in value.items()} if is_dict else value
        M = len(self.corpus.vocab)
        config = {
            "model": _model_config(M, self.config),
            "train": dataclasses.asdict(self.config),
            "data": {
                "source": self.corpus.source,
                "sha256": self.corpus.sha256,
                "val_fraction": self.corpus.val_fraction,
                "n_train": len(self.corpus.train),
                "n_val": len(self.corpus.val),
            },
            "backend": {"name": be.name, "device": str(be.device)},
        }
        return Checkpoint(
            params=params,
            opt_state=opt_state,
            vocab=self.corpus.vocab.chars,
            step=self.step,
            config=config,
            hidden=be.to_numpy(self.hidden),
            position={"epoch": self.epoch, "chunk": self.chunk, "offset": self.offset},
            rng_state=self.rng.bit_generator.state,
            history={k: np.asarray(v, dtype=np.float64) for k, v in self.history.items()},
            best=dict(self.best),
        )

    def save(self, name: str = LATEST) -> Path | None:
        """Write a checkpoint into the checkpoint directory, never from non-finite params."""
        if self.checkpoint_dir is None:
            return None
        if self.failed_step is not None:
            raise NonFiniteError(
                f"step {self.step}: training diverged at step {self.failed_step}; "
                "no checkpoint written",
                self.failed_step,
            )
        if not self.params_finite():
            raise NonFiniteError(
                f"step {self.step}: the parameters are not finite; no checkpoint written",
                self.step,
            )
        target = self.checkpoint_dir / name
        try:
            return save_checkpoint(target, self.checkpoint())
        except OSError as e:  # e.g. the disk filled up during the run
            kept = "is unchanged" if target.exists() else "was never written"
            raise CheckpointError(
                f"checkpoint: cannot write {str(target)!r} at step {self.step}: "
                f"{e.strerror or e}; the previous {name} {kept}"
            ) from None

    # ---- validation ---------------------------------------------------------------------

    def validate(self) -> float:
        """Validation bits per character (no dropout), carrying state through the text."""
        return evaluate(self.params, self._val)

    def sample_text(self, length: int | None = None) -> str:
        n = self.config.sample_length if length is None else length
        prime = self.corpus.vocab.decode(self.corpus.val[:1])
        seed = [self.config.seed, 2, self.step]  # apart from the training generator
        return prime + sample(self.params, self.corpus.vocab, length=n, prime=prime, seed=seed)

    def _after_eval(self, val_bpc: float, reporter: Reporter) -> bool:
        """Record, report, checkpoint; True when early stopping says stop."""
        if not self.params_finite():  # the last update overflowed: stop before sampling
            self.failed_step = self.step
            raise NonFiniteError(self._diverged(self.step, "parameters"), self.step)
        if not math.isfinite(val_bpc):  # finite but diverged parameters: never "best"
            self.failed_step = self.step
            raise NonFiniteError(self._diverged(self.step, "validation loss"), self.step)
        self.history["val_step"].append(float(self.step))
        self.history["val_bpc"].append(val_bpc)
        best = self.best["best_val"]
        is_best = best is None or val_bpc < best
        if is_best:
            self.best.update(best_val=val_bpc, best_step=self.step, evals_since=0)
        else:
            self.best["evals_since"] += 1
        reporter.on_eval(self.step, val_bpc, is_best, self.sample_text())
        self.save(LATEST)
        if is_best:
            self.save(BEST)
        patience = self.config.patience
        return patience is not None and self.best["evals_since"] >= patience

    # ---- the loop -----------------------------------------------------------------------

    def run(
        self,
        *,
        steps: int | None = None,
        minutes: float | None = None,
        reporter: Reporter | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Train until global step ``steps``, ``minutes`` of wall time, early stopping or
        ``should_stop()`` (a host flag, e.g. set by a SIGINT handler), whichever is first.

        Raises :class:`NonFiniteError` naming the first step whose loss or gradient
        norm was NaN or infinite; the last good checkpoint is left untouched.
        """
        if steps is None and minutes is None:
            raise ValueError("run: give steps or minutes (or both)")
        if self.failed_step is not None:
            raise NonFiniteError(f"training diverged at step {self.failed_step}", self.failed_step)
        if self.checkpoint_dir is not None:  # a full disk is found now, not at the first save
            check_writable(self.checkpoint_dir, nbytes=2 * self.checkpoint_bytes())
        errstate = np.errstate(over="ignore", invalid="ignore", divide="ignore")
        with errstate, self.backend.activate():  # CuPy: kernels run on this run's GPU
            return self._run(steps, minutes, reporter, should_stop)

    def _run(
        self,
        steps: int | None,
        minutes: float | None,
        reporter: Reporter | None,
        should_stop: Callable[[], bool] | None,
    ) -> TrainResult:
        # NumPy's overflow warnings are silenced: non-finite values are detected and
        # reported by step below, on every backend alike.
        reporter = reporter or Reporter()
        c, be, xp = self.config, self.backend, self.backend.xp
        zero = xp.zeros((), dtype=self._dtype, device=be.device)
        loss_sum, n_bad, n_good_before = zero, zero, zero  # device-side, read at logs
        logged_step, t_log = self.step, time.perf_counter()
        deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
        reason, last_val, first = "steps", None, True
        if self.corpus.train.min() < 0 or self.corpus.train.max() >= len(self.corpus.vocab):
            raise ValueError("data: token ids out of range")  # once, on the host
        while True:
            if steps is not None and self.step >= steps:
                break
            if deadline is not None and time.monotonic() >= deadline:
                reason = "time"
                break
            if should_stop is not None and should_stop():
                reason = "interrupted"
                break
            loss, norm = self._step(check_values=first)  # first step validates params once
            first = False
            ok = xp.isfinite(loss) & xp.isfinite(norm)
            n_bad = n_bad + xp.astype(~ok, self._dtype)
            n_good_before = n_good_before + xp.astype(n_bad == 0, self._dtype)
            loss_sum = loss_sum + loss
            reporter.on_step(self.step)
            at_eval = self.step % c.eval_every == 0
            if self.step % c.log_every == 0 or at_eval:
                self._check_and_log(loss_sum, n_bad, n_good_before, logged_step, t_log, reporter)
                loss_sum, n_bad, n_good_before = zero, zero, zero
                logged_step, t_log = self.step, time.perf_counter()
            if at_eval:
                last_val = self.validate()
                stop = self._after_eval(last_val, reporter)
                t_log = time.perf_counter()  # evaluation time is not training time
                if stop:
                    reason = "early_stop"
                    break
        if self.step > logged_step:
            self._check_and_log(loss_sum, n_bad, n_good_before, logged_step, t_log, reporter)
        if not self.history["val_step"] or self.history["val_step"][-1] != self.step:
            last_val = self.validate()
            self._after_eval(last_val, reporter)
        elif last_val is None:
            last_val = self.history["val_bpc"][-1]
        d = self.checkpoint_dir
        return TrainResult(
            self.step,
            reason,
            last_val,
            self.best["best_val"],
            self.best["best_step"],
            None if d is None else d / LATEST,
            None if d is None or self.best["best_step"] is None else d / BEST,
        )

    def _check_and_log(
        self,
        loss_sum: Any,
        n_bad: Any,
        n_good_before: Any,
        since: int,
        t0: float,
        reporter: Reporter,
    ) -> None:
        """The one host read per log interval: mean loss and the non-finite record."""
        xp = self.backend.xp
        total, bad, good = self.backend.to_numpy(xp.stack([loss_sum, n_bad, n_good_before]))
        steps = self.step - since
        if bad > 0:
            first_bad = since + int(good) + 1
            self.failed_step = first_bad
            raise NonFiniteError(self._diverged(first_bad, "loss or gradient"), first_bad)
        bpc = float(total) / steps / LN2
        elapsed = max(time.perf_counter() - t0, 1e-9)
        chars_per_s = steps * self.config.batch * self.config.seq_len / elapsed
        self.history["train_step"].append(float(self.step))
        self.history["train_bpc"].append(bpc)
        reporter.on_log(self.step, bpc, chars_per_s)

    def _diverged(self, step: int, what: str) -> str:
        """The one-line NonFiniteError message: the step, the checkpoint kept, what to do."""
        latest = None if self.checkpoint_dir is None else self.checkpoint_dir / LATEST
        where = (
            f"the last good checkpoint, {latest}, is untouched"
            if latest is not None and latest.exists()
            else "no checkpoint was written"
        )
        return (
            f"training stopped: the {what} became NaN or infinite at step {step}; {where}. "
            "Resume with a lower --lr or a smaller --clip."
        )
