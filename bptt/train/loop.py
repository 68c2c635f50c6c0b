"""The training loop: steps, logging, validation, samples and checkpoints.

No step synchronises with the device: the loss and a non-finite record are kept on
the device (:class:`bptt.train.step.Tally`) and read every ``log_every`` steps, so a
NaN is still reported at the step it first appeared. Checkpoints are never written
from non-finite parameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends
from ..execution.compiled import compile_step
from ..host.limits import require_memory
from ..math.flat import Layout
from ..text.data import Corpus, Streams
from ..text.sample import sample
from ..text.validation import evaluate, layout_validation
from .checkpoint import (
    BEST,
    LATEST,
    MODEL_OPTIONS,
    Checkpoint,
    CheckpointError,
    check_writable,
    run_from_checkpoint,
    run_to_checkpoint,
    save_checkpoint,
)
from .config import RESUMABLE, TrainConfig
from .distributed import Local, as_communicator
from .feed import EpochFeed
from .parallel import make_parallel_step
from .rundir import RunLock
from .state import RunState
from .step import Tally, TrainCarry, make_train_step

__all__ = ["NonFiniteError", "Reporter", "TrainResult", "Trainer"]

LN2 = math.log(2.0)


class NonFiniteError(FloatingPointError):
    """The loss or gradient became NaN or infinite; ``step`` is the first bad step."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


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


def _backend(backend: Any) -> backends.Backend:
    return backend if isinstance(backend, backends.Backend) else backends.get_backend(backend)


def _require_memory(config: TrainConfig, M: int, be: backends.Backend) -> None:
    """TooLargeError (a ValueError) before allocating a model that cannot fit."""
    require_memory(config.memory_bytes(M, M), f"a model of --hidden {config.hidden} "
                   f"(M = C = {M}, --batch {config.batch}, --seq-len {config.seq_len}, "
                   f"{config.dtype})", backend=be,
                   fix="use a smaller --hidden, --batch or --seq-len")  # fmt: skip


class Trainer:
    """A training run on one device: the run state, its data and its checkpoints.

    Build it with :meth:`create` (new parameters) or :meth:`resume` (from a
    checkpoint), then call :meth:`run`.

    ``comm`` (an mpi4py communicator or a :class:`bptt.train.distributed.Communicator`):
    data-parallel training, this process one of its ranks, training on B/N of the
    streams; every rank builds its Trainer with the same options and calls ``run`` with
    the same arguments. Rank 0 alone locks the directory and writes checkpoints and
    samples; see :mod:`bptt.train.distributed`. ``allreduce`` picks how gradients are summed
    (:func:`bptt.train.allreduce.gradient_allreduce`).
    """

    def __init__(
        self,
        corpus: Corpus,
        config: TrainConfig,
        backend: Any,
        state: RunState,
        checkpoint_dir: str | Path | None = None,
        *,
        compile: str = "auto",
        comm: Any = None,
        allreduce: str = "auto",
    ) -> None:
        be = _backend(backend)
        self.comm = as_communicator(comm)  # bptt.train.distributed.Local for one process
        with self.comm.startup(run=_fingerprint(corpus, config, be, state, compile, allreduce)):
            self.shard = _shard(self.comm, config.batch, resumed=state.step > 0)  # B % N refused
        corpus.check_fits(batch=config.batch, seq_len=config.seq_len)
        be.require_dtype(config.dtype)  # names the fix (float32, or JAX's x64 switch)
        self.corpus, self.config, self.backend, self.state = corpus, config, be, state
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.failed_step: int | None = None  # set when a non-finite loss is found
        self.written: dict[str, int] = {}  # checkpoint name -> the step this run saved in it
        self.lock: RunLock | None = None  # held while the run writes its directory
        self.resumed_at: int | None = None  # the step of the checkpoint a resume started from
        self.optimizer = config.make_optimizer()
        self.model = config.model(len(corpus.vocab))  # what the parameters are
        if isinstance(self.comm, Local):
            step = make_train_step(self.optimizer, state.layout, dropout=config.dropout,
                                   seed=config.seed, model=self.model,
                                   remat=config.remat)  # fmt: skip
            self.train_step = compile_step(step, be, compile)  # .mode, .compile_seconds
        else:  # the gradient part, the all-reduce, the update part
            self.train_step = make_parallel_step(
                self.optimizer, state.layout, self.comm, be, self.shard, dropout=config.dropout,
                seed=config.seed, compile=compile, allreduce=allreduce,
                model=self.model, remat=config.remat,
            )  # fmt: skip
        with be.activate():  # CuPy: allocate on this run's GPU, not the current one
            self.feed = EpochFeed(corpus.train, Streams(len(corpus.train), config.batch,
                                                        config.seq_len), be,
                                  columns=slice(self.shard.start, self.shard.stop))  # fmt: skip
            self.val = layout_validation(corpus.val, streams=config.val_streams,
                                         warmup=config.val_warmup, backend=be,
                                         dtype=config.dtype,
                                         part=(self.comm.rank, self.comm.size))  # fmt: skip
            if state.carry.hidden is not None and self.shard.size > 1:  # resumed: this rank's
                hidden = state.carry.hidden[..., self.shard.start : self.shard.stop, :]
                state.carry = state.carry._replace(hidden=hidden)  # (..., B/N, D)
            if state.offset < 0:
                self._begin_epoch()
            else:
                self.feed.begin_epoch(state.offset)

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        corpus: Corpus,
        config: TrainConfig,
        *,
        backend: Any = None,
        checkpoint_dir: str | Path | None = None,
        compile: str = "auto",
        comm: Any = None,
        allreduce: str = "auto",
    ) -> Trainer:
        """A new run: parameters from ``config.seed`` (see :func:`bptt.init_params`).

        ``compile``: ``"auto"`` (``jax.jit`` on JAX, none elsewhere), ``"jit"``,
        ``"cuda-graph"`` (CuPy or torch CUDA) or ``"none"``; see
        :func:`bptt.execution.compiled.compile_step`. ``comm``, ``allreduce``: data-parallel
        training (see :class:`Trainer`).
        """
        be, M = _backend(backend), len(corpus.vocab)
        _require_memory(config, M, be)
        xp = be.xp
        with be.activate():
            params = config.model(M).init(seed=config.seed, dtype=config.dtype,
                                          backend=be.name, device=be.device)  # fmt: skip
            layout = Layout.of(params)
            flat = layout.flatten(params, xp)  # (N,)
            counter = xp.zeros((), dtype=be.integer, device=be.device)
            opt_state = config.make_optimizer().init(flat)
        rng = np.random.default_rng([config.seed, 1])  # apart from init's stream
        carry = TrainCarry(flat, opt_state, None, counter)  # hidden: set by the first epoch
        return cls(corpus, config, be, RunState(carry, layout, rng), checkpoint_dir,
                   compile=compile, comm=comm, allreduce=allreduce)  # fmt: skip

    @classmethod
    def resume(cls, ckpt: Checkpoint, corpus: Corpus, *, backend: Any = None,
               checkpoint_dir: str | Path | None = None, compile: str = "auto",
               comm: Any = None, allreduce: str = "auto", **overrides: Any) -> Trainer:  # fmt: skip
        """Continue the run saved in ``ckpt`` on ``backend``; ``overrides`` from RESUMABLE.

        An overridden ``lr`` replaces the stored base rate from the resumed step on:
        the optimizer's moments and counts are kept, a ``lr_decay`` schedule continues
        from the global step, and later checkpoints store the new rate. This is how a
        run that diverged (:class:`NonFiniteError`) continues from its last checkpoint.
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
        fraction = data.get("val_fraction", corpus.val_fraction)
        if fraction != corpus.val_fraction:
            raise ValueError(
                f"--val-fraction {corpus.val_fraction:g}: the run validates on its last "
                f"{fraction:g}; another split would change the training text and compare the "
                "best across two validation sets: resume with the stored fraction"
            )
        stored = dataclasses.asdict(ckpt.train)
        bad = [k for k, v in overrides.items() if k not in RESUMABLE and stored.get(k) != v]
        if bad:
            raise ValueError(f"resume: {bad} cannot change when resuming; only {list(RESUMABLE)}")
        config = dataclasses.replace(ckpt.train, **overrides)
        ckpt.check_sizes(M=len(corpus.vocab), D=config.hidden, layers=config.layers)
        be = _backend(backend)
        _require_memory(config, len(corpus.vocab), be)
        if not be.supports(config.dtype):
            raise ValueError(f"dtype: the checkpoint is {config.dtype}, which {be.name} lacks here")
        with be.activate():
            state = run_from_checkpoint(ckpt, optimizer=config.make_optimizer(), backend=be,
                                        dtype=config.dtype)  # fmt: skip
        trainer = cls(corpus, config, be, state, checkpoint_dir, compile=compile, comm=comm,
                      allreduce=allreduce)  # fmt: skip
        trainer.resumed_at = ckpt.step
        return trainer

    # ---- the run state, by name ---------------------------------------------------------

    @property
    def params(self) -> dict[str, Any]:
        """The named parameters, views of the flat vector the step updates."""
        return self.state.layout.unflatten(self.state.carry.params, self.backend.xp)

    opt_state = property(lambda self: self.state.carry.opt_state)
    hidden = property(lambda self: self.state.carry.hidden)
    step = property(lambda self: self.state.step)
    history = property(lambda self: self.state.history)
    best = property(lambda self: self.state.best)

    # ---- one step -----------------------------------------------------------------------

    def _begin_epoch(self) -> None:
        """A new epoch: streams from a random offset in [0, T), the state reset to zero."""
        c, s, xp = self.config, self.state, self.backend.xp
        s.offset, s.chunk = int(s.rng.integers(0, c.seq_len)), 0
        self.feed.begin_epoch(s.offset)
        shape = self.model.carry_shape(self.shard.local)  # this rank's streams
        zeros = xp.zeros(shape, dtype=getattr(xp, c.dtype), device=self.backend.device)
        s.carry = s.carry._replace(hidden=zeros)

    def advance(self) -> tuple[Any, Any]:
        """One update on the next chunk. Returns the loss and gradient norm (0-d, device)."""
        s = self.state
        x, y = self.feed.chunk(s.chunk)  # (T, B) inputs and next characters
        s.carry, loss, norm = self.train_step(s.carry, x, y)
        s.step, s.chunk = s.step + 1, s.chunk + 1
        if s.chunk == self.feed.streams.chunks:
            s.epoch += 1
            self._begin_epoch()  # reset the state at the end of the data
        return loss, norm

    # ---- checkpoints --------------------------------------------------------------------

    def checkpoint_bytes(self) -> int:
        """About the size of one checkpoint file: parameters, optimizer state, hidden."""
        from ..optim import state_arrays

        itemsize = 8 if self.config.dtype == "float64" else 4
        carry = self.state.carry
        arrays = [carry.params, carry.hidden, *state_arrays(carry.opt_state).values()]
        n = sum(math.prod(a.shape) for a in arrays)
        return itemsize * n + 65536  # + history and metadata

    def checkpoint(self) -> Checkpoint | None:
        """Host copy of the whole run state (on several ranks: every rank's hidden state
        gathered on rank 0, which alone gets the checkpoint; None on the others)."""
        hidden = self.comm.gather_batch(self.state.carry.hidden, self.backend)  # ranks: (B, D)
        if not self.comm.is_root:
            return None
        be, corpus = self.backend, self.corpus
        c = self.config
        config = {
            "model": self.model.config(),  # the configuration once: the model, the rest
            "train": {k: v for k, v in dataclasses.asdict(c).items() if k not in MODEL_OPTIONS},
            "data": {"source": corpus.source, "sha256": corpus.sha256,
                     "val_fraction": corpus.val_fraction, "n_train": len(corpus.train),
                     "n_val": len(corpus.val)},
            "backend": {"name": be.name, "device": str(be.device)},
        }  # fmt: skip
        ckpt = run_to_checkpoint(self.state, config=config, vocab=corpus.vocab.chars, backend=be)
        return ckpt if hidden is None else dataclasses.replace(ckpt, hidden=hidden)

    def save(self, name: str = LATEST) -> Path | None:
        """Write a checkpoint into the checkpoint directory (the caller checked the
        parameters are finite)."""
        if self.checkpoint_dir is None:
            return None
        if self.failed_step is not None:
            raise NonFiniteError(f"step {self.step}: training diverged at step "
                                 f"{self.failed_step}; no checkpoint written",
                                 self.failed_step)  # fmt: skip
        target = self.checkpoint_dir / name
        ckpt = self.checkpoint()  # on several ranks, a gather; rank 0 alone writes
        with self.comm.startup("write a checkpoint", CheckpointError, save=(name, self.step)):
            try:
                saved = None if ckpt is None else save_checkpoint(target, ckpt)
                if saved is not None and name == LATEST:  # rank 0 knows at once (watchdog)
                    self.comm.saved = f"{target} (step {self.step})"
            except OSError as e:  # e.g. the disk filled up during the run
                kept = "is unchanged" if target.exists() else "was never written"
                raise CheckpointError(
                    f"checkpoint: cannot write {str(target)!r} at step {self.step}: "
                    f"{e.strerror or e}; the previous {name} {kept}"
                ) from None
        self.written[name] = self.step
        if name == LATEST:  # named in the ranks' messages (watchdog, divergence)
            self.comm.saved = f"{target} (step {self.step})"
        return target if saved is None else saved

    # ---- validation ---------------------------------------------------------------------

    def validate(self) -> float:
        """Validation bits per character (no dropout), carrying state through the text
        (on several ranks each scores its share of the streams; the parts are summed)."""
        if isinstance(self.comm, Local):
            return evaluate(self.model, self.params, self.val)
        part = 0.0 if self.val is None else evaluate(self.model, self.params, self.val)
        return self.comm.sum_floats(part)

    def sample_text(self, length: int | None = None) -> str:
        """A sample from the model after the first validation character ("" on ranks
        other than 0: rank 0 alone samples)."""
        if not self.comm.is_root:
            return ""
        n = self.config.sample_length if length is None else length
        prime = self.corpus.vocab.decode(self.corpus.val[:1])
        seed = [self.config.seed, 2, self.step]  # apart from the training generator
        return prime + sample(self.model, self.params, self.corpus.vocab, length=n, prime=prime,
                              seed=seed)  # fmt: skip

    # ---- the loop -----------------------------------------------------------------------

    def run(self, *, steps: int | None = None, minutes: float | None = None,
            reporter: Reporter | None = None,
            should_stop: Callable[[], bool] | None = None) -> TrainResult:  # fmt: skip
        """Train until global step ``steps``, ``minutes`` of wall time, early stopping or
        ``should_stop()`` (a host flag, e.g. set by a SIGINT handler), whichever is first.

        Raises :class:`NonFiniteError` naming the first step whose loss or gradient
        norm was NaN or infinite; the last good checkpoint is left untouched.
        """
        from .run import run_loop

        if steps is None and minutes is None:
            raise ValueError("run: give steps or minutes (or both)")
        if self.failed_step is not None:
            raise NonFiniteError(f"training diverged at step {self.failed_step}", self.failed_step)
        train = self.corpus.train
        if train.min() < 0 or train.max() >= len(self.corpus.vocab):
            raise ValueError("data: token ids out of range")  # once, on the host
        root = self.comm.is_root  # on several ranks, rank 0 alone locks and writes
        locked = self.lock is None and self.checkpoint_dir is not None and root
        try:
            with self.comm.startup(steps=steps, minutes=minutes, step=self.step):
                if locked:
                    self.lock_directory()
                if self.checkpoint_dir is not None and root:  # a full disk is found now
                    check_writable(self.checkpoint_dir, nbytes=2 * self.checkpoint_bytes())
            errstate = np.errstate(over="ignore", invalid="ignore", divide="ignore")
            with errstate, self.backend.activate():  # CuPy: kernels run on this run's GPU
                return run_loop(self, steps, minutes, reporter or Reporter(), should_stop)
        finally:
            if locked:
                self.unlock_directory()

    def lock_directory(self) -> None:
        """Take the checkpoint directory's exclusive lock (:class:`bptt.train.rundir.RunLock`)
        until :meth:`unlock_directory`; :meth:`run` holds it for its duration if the
        caller does not. CheckpointError when another run holds it. On several ranks only
        rank 0 locks (the others never write the directory)."""
        if self.lock is None and self.checkpoint_dir is not None and self.comm.is_root:
            self.lock = RunLock(self.checkpoint_dir).acquire()

    def unlock_directory(self) -> None:
        if self.lock is not None:
            lock, self.lock = self.lock, None
            lock.release()

    def new_tally(self) -> Tally:
        be = self.backend
        return Tally.zero(be.xp, getattr(be.xp, self.config.dtype), be.device)

    def diverged(self, step: int, what: str) -> str:
        """The one-line NonFiniteError message: the step, the checkpoint kept, what to do."""
        if LATEST in self.written:  # named only if this run wrote it
            latest = self.checkpoint_dir / LATEST
            where = (
                f"the last good checkpoint, {latest} (step {self.written[LATEST]}), is untouched"
            )
        elif self.resumed_at is not None:
            where = (f"this run wrote no checkpoint; the one it resumed from (step "
                     f"{self.resumed_at}) is untouched")  # fmt: skip
        else:  # nothing to resume from: a new run is the way on
            return (
                f"training stopped: the {what} became NaN or infinite at step {step}; no "
                "checkpoint was written. Start the run again with a lower --lr or a smaller "
                "--clip."
            )
        return (
            f"training stopped: the {what} became NaN or infinite at step {step}; {where}. "
            "Resume with a lower --lr or a smaller --clip."
        )

    def result(self, reason: str, last_val: float | None) -> TrainResult:
        d, best = self.checkpoint_dir, self.best
        return TrainResult(
            self.step, reason, last_val, best["best_val"], best["best_step"],
            None if d is None else d / LATEST,
            None if d is None or best["best_step"] is None else d / BEST,
        )  # fmt: skip


def _shard(comm: Any, batch: int, *, resumed: bool) -> Any:
    """This rank's streams. A batch the ranks cannot split is refused with a fix that
    works: on a resume --batch cannot change, so the fix is another number of ranks."""
    try:
        return comm.shard(batch)
    except ValueError:
        if not resumed:
            raise
        counts = [n for n in range(1, batch + 1) if batch % n == 0][:8]
        raise ValueError(
            f"--batch {batch}: a resumed run keeps its batch, and {comm.size} ranks cannot "
            f"split it (each rank takes B/N of the B streams); resume it on a number of ranks "
            f"that divides {batch}: mpiexec -n N with N in {counts}"
        ) from None


def _fingerprint(corpus: Corpus, config: TrainConfig, be: backends.Backend, state: RunState,
                 compile: str, allreduce: str) -> dict[str, Any]:  # fmt: skip
    """What every rank of a data-parallel run must agree on (compared at start)."""
    from .. import __version__

    return {
        "config": dataclasses.asdict(config),
        "data": {"source": corpus.source, "sha256": corpus.sha256, "n_train": len(corpus.train),
                 "val_fraction": corpus.val_fraction},
        "position": {"step": state.step, "epoch": state.epoch, "chunk": state.chunk,
                     "offset": state.offset},
        "backend": be.name, "compile": compile, "allreduce": allreduce, "bptt": __version__,
    }  # fmt: skip
