"""The training loop: steps, logging, validation, samples and checkpoints.

No step synchronises with the device: the loss and a non-finite record are kept on
the device (:class:`bptt.train.step.Tally`) and read every ``log_every`` steps, so a
NaN is still reported at the step it first appeared. Checkpoints are never written
from non-finite parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends, optim
from ..execution.compiled import compile_step
from ..host.limits import require_memory
from ..math.flat import Layout
from ..text.data import Corpus, Streams
from ..text.sample import sample
from ..text.validation import evaluate, layout_validation
from .checkpoint import (
    LATEST,
    MODEL_OPTIONS,
    Checkpoint,
    CheckpointError,
)
from .config import RESUMABLE, TrainConfig
from .directory import checkpoint_bytes, claim, held, write
from .distributed import Local, as_communicator
from .feed import EpochFeed
from .loop import NonFiniteError, Reporter, TrainResult, run_loop
from .parallel import make_parallel_step
from .rundir import RunLock
from .state import HISTORY_KEYS, RunState
from .step import TrainCarry, make_train_step

__all__ = ["NonFiniteError", "Reporter", "TrainResult", "Trainer"]


def _backend(backend: Any) -> backends.Backend:
    return backend if isinstance(backend, backends.Backend) else backends.get_backend(backend)


def _require_memory(config: TrainConfig, M: int, be: backends.Backend) -> None:
    """TooLargeError (a ValueError) before allocating a model that cannot fit."""
    require_memory(config.memory_bytes(M, M), f"a model of hidden={config.hidden} "
                   f"(M = C = {M}, batch={config.batch}, seq_len={config.seq_len}, "
                   f"{config.dtype})", backend=be,
                   fix="use a smaller hidden=..., batch=... or seq_len=...")  # fmt: skip


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

    def __init__(self, corpus: Corpus, config: TrainConfig, backend: Any, state: RunState,
                 checkpoint_dir: str | Path | None = None, *, compile: str = "auto",
                 comm: Any = None, allreduce: str = "auto") -> None:  # fmt: skip
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
        self.resumed_from: Path | None = None  # and its file, when it was read from one
        self.claimed = False  # claim_directory ran: the directory is this run's
        self.optimizer = config.make_optimizer()
        self.model = config.model(len(corpus.vocab))  # what the parameters are
        self.train_step = _train_step(self, compile, allreduce)  # .mode, .compile_seconds
        with be.activate():  # CuPy: allocate on this run's GPU, not the current one
            self.feed, self.val = _feeds(self)
            if state.carry.hidden is not None and self.shard.size > 1:  # resumed: this rank's
                hidden = state.carry.hidden[..., self.shard.start : self.shard.stop, :]
                state.carry = state.carry._replace(hidden=hidden)  # (..., B/N, D)
            if state.offset < 0:
                self._begin_epoch()
            else:
                self.feed.begin_epoch(state.offset)

    @classmethod
    def create(cls, corpus: Corpus, config: TrainConfig, *, backend: Any = None,
               checkpoint_dir: str | Path | None = None, compile: str = "auto",
               comm: Any = None, allreduce: str = "auto") -> Trainer:  # fmt: skip
        """A new run: parameters from ``config.seed`` (see :func:`bptt.init_params`).

        ``compile``: ``"auto"`` (``jax.jit`` on JAX, none elsewhere), ``"jit"``,
        ``"cuda-graph"`` (CuPy or torch CUDA) or ``"none"``; see
        :func:`bptt.execution.compiled.compile_step`. ``comm``, ``allreduce``: data-parallel
        training (see :class:`Trainer`).
        """
        be = _backend(backend)
        state = _new_state(config, len(corpus.vocab), be)
        return cls(corpus, config, be, state, checkpoint_dir,
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
        be = _backend(backend)
        config = _resumed_config(ckpt, corpus, overrides, be)
        with be.activate():
            state = run_from_checkpoint(ckpt, optimizer=config.make_optimizer(), backend=be,
                                        dtype=config.dtype)  # fmt: skip
        trainer = cls(corpus, config, be, state, checkpoint_dir, compile=compile, comm=comm,
                      allreduce=allreduce)  # fmt: skip
        trainer.resumed_at, trainer.resumed_from = ckpt.step, ckpt.source
        return trainer

    @property
    def params(self) -> dict[str, Any]:
        """The named parameters, views of the flat vector the step updates."""
        return self.state.layout.unflatten(self.state.carry.params, self.backend.xp)

    opt_state = property(lambda self: self.state.carry.opt_state)
    hidden = property(lambda self: self.state.carry.hidden)
    step = property(lambda self: self.state.step)
    history = property(lambda self: self.state.history)
    best = property(lambda self: self.state.best)

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

    def checkpoint_bytes(self) -> int:
        """About the size of one checkpoint file: parameters, optimizer state, hidden."""
        return checkpoint_bytes(self.state.carry, self.config.dtype)

    def checkpoint(self) -> Checkpoint | None:
        """Host copy of the whole run state (on several ranks: every rank's hidden state
        gathered on rank 0, which alone gets the checkpoint; None on the others)."""
        hidden = self.comm.gather_batch(self.state.carry.hidden, self.backend)  # ranks: (B, D)
        if not self.comm.is_root:
            return None
        ckpt = run_to_checkpoint(self.state, config=_stored_config(self),
                                 vocab=self.corpus.vocab.chars, backend=self.backend)  # fmt: skip
        return ckpt if hidden is None else dataclasses.replace(ckpt, hidden=hidden)

    def save(self, name: str = LATEST) -> Path | None:
        """Write a checkpoint into the checkpoint directory (:func:`bptt.train.directory.write`;
        the caller checked that the parameters are finite)."""
        return write(self, name)

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

    def run(self, *, steps: int | None = None, minutes: float | None = None,
            reporter: Reporter | None = None,
            should_stop: Callable[[], bool] | None = None) -> TrainResult:  # fmt: skip
        """Train until global step ``steps``, ``minutes`` of wall time, early stopping or
        ``should_stop()`` (a host flag, e.g. set by a SIGINT handler), whichever is first.

        Raises :class:`NonFiniteError` naming the first step whose loss or gradient
        norm was NaN or infinite; the last good checkpoint is left untouched.
        """
        if steps is None and minutes is None:
            raise ValueError("run: give steps or minutes (or both)")
        if self.failed_step is not None:
            raise NonFiniteError(f"training diverged at step {self.failed_step}", self.failed_step)
        train = self.corpus.train
        if train.min() < 0 or train.max() >= len(self.corpus.vocab):
            raise ValueError("data: token ids out of range")  # once, on the host
        reporter = reporter or Reporter()
        note = getattr(reporter, "on_note", print)  # a reporter of before on_note: printed
        with held(self, note, steps=steps, minutes=minutes):  # the directory
            errstate = np.errstate(over="ignore", invalid="ignore", divide="ignore")
            with errstate, self.backend.activate():  # CuPy: kernels run on this run's GPU
                return run_loop(self, steps, minutes, reporter, should_stop)

    def claim_directory(self, checkpoint_dir: str | Path | None = None, *,
                        overwrite: bool = False) -> list[str]:  # fmt: skip
        """Choose, lock and check the run directory before the first step
        (:func:`bptt.train.directory.claim`): ``checkpoint_dir``, else a resumed
        ``latest.npz``'s own directory or a new ``checkpoints/<date>-<time>``; a directory
        holding another run is refused unless ``overwrite``. :meth:`run` does this for a
        ``checkpoint_dir`` given at construction. Returns notes on what was done."""
        notes = claim(self, checkpoint_dir, overwrite=overwrite) if self.comm.is_root else []
        self.claimed = True
        return notes

    def lock_directory(self) -> None:
        """Take the directory's exclusive lock (:class:`bptt.train.rundir.RunLock`) until
        :meth:`unlock_directory`; rank 0 alone locks. CheckpointError if another run has it."""
        if self.lock is None and self.checkpoint_dir is not None and self.comm.is_root:
            self.lock = RunLock(self.checkpoint_dir).acquire()

    def unlock_directory(self) -> None:
        if self.lock is not None:
            lock, self.lock = self.lock, None
            lock.release()


def _shard(comm: Any, batch: int, *, resumed: bool) -> Any:
    """This rank's streams. A batch the ranks cannot split is refused with a fix that
    works: on a resume the batch cannot change, so the fix is another number of ranks."""
    try:
        return comm.shard(batch)
    except ValueError:
        if not resumed:
            raise
        counts = [n for n in range(1, batch + 1) if batch % n == 0][:8]
        raise ValueError(
            f"batch={batch}: a resumed run keeps its batch, and {comm.size} ranks cannot "
            f"split it (each rank takes B/N of the B streams); resume it on a number of ranks "
            f"that divides {batch}: mpiexec -n N with N in {counts}"
        ) from None


def _fingerprint(corpus: Corpus, config: TrainConfig, be: backends.Backend, state: RunState,
                 compile: str, allreduce: str) -> dict[str, Any]:  # fmt: skip
    """What every rank of a data-parallel run must agree on (compared at start)."""
    from .._version import __version__

    return {
        "config": dataclasses.asdict(config),
        "data": {"source": corpus.source, "sha256": corpus.sha256, "n_train": len(corpus.train),
                 "val_fraction": corpus.val_fraction},
        "position": {"step": state.step, "epoch": state.epoch, "chunk": state.chunk,
                     "offset": state.offset},
        "backend": be.name, "compile": compile, "allreduce": allreduce, "bptt": __version__,
    }  # fmt: skip


def _new_state(config: TrainConfig, M: int, be: backends.Backend) -> RunState:
    """A new run's state: the model's parameters from ``config.seed`` as one flat vector,
    the optimizer's state, the step counter; the hidden state is set by the first epoch."""
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
    return RunState(carry, layout, rng)


def _train_step(trainer: Trainer, compile: str, allreduce: str) -> Any:
    """The compiled training step of this rank: the whole step, or on several ranks the
    gradient part, the all-reduce and the update part."""
    c, be, state = trainer.config, trainer.backend, trainer.state
    options = {"dropout": c.dropout, "seed": c.seed, "model": trainer.model, "remat": c.remat}
    if isinstance(trainer.comm, Local):
        step = make_train_step(trainer.optimizer, state.layout, **options)
        return compile_step(step, be, compile)
    return make_parallel_step(trainer.optimizer, state.layout, trainer.comm, be, trainer.shard,
                              compile=compile, allreduce=allreduce, **options)  # fmt: skip


def _feeds(trainer: Trainer) -> tuple[EpochFeed, Any]:
    """This rank's training feed and its part of the validation streams."""
    c, be, shard, comm = trainer.config, trainer.backend, trainer.shard, trainer.comm
    train, val = trainer.corpus.train, trainer.corpus.val
    feed = EpochFeed(train, Streams(len(train), c.batch, c.seq_len), be,
                     columns=slice(shard.start, shard.stop))  # fmt: skip
    return feed, layout_validation(val, streams=c.val_streams, warmup=c.val_warmup, backend=be,
                                   dtype=c.dtype, part=(comm.rank, comm.size))  # fmt: skip


def _resumed_config(ckpt: Checkpoint, corpus: Corpus, overrides: dict[str, Any],
                    be: backends.Backend) -> TrainConfig:  # fmt: skip
    """The options a resume of ``ckpt`` on ``corpus`` runs with: the stored ones, with
    ``overrides`` from RESUMABLE; refused on another text, split or model size, or a
    dtype or memory ``be`` lacks."""
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
            f"val_fraction={corpus.val_fraction:g}: the run validates on its last "
            f"{fraction:g}; another split would change the training text and compare the "
            "best across two validation sets: resume with the stored fraction"
        )
    stored = dataclasses.asdict(ckpt.train)
    bad = [k for k, v in overrides.items() if k not in RESUMABLE and stored.get(k) != v]
    if bad:
        raise ValueError(f"resume: {bad} cannot change when resuming; only {list(RESUMABLE)}")
    config = dataclasses.replace(ckpt.train, **overrides)
    ckpt.check_sizes(M=len(corpus.vocab), D=config.hidden, layers=config.layers)
    _require_memory(config, len(corpus.vocab), be)
    if not be.supports(config.dtype):
        raise ValueError(f"dtype: the checkpoint is {config.dtype}, which {be.name} lacks here")
    return config


def _stored_config(trainer: Trainer) -> dict[str, Any]:
    """The configuration a checkpoint stores once: the model, the other options, the text
    and where the run ran."""
    be, corpus, c = trainer.backend, trainer.corpus, trainer.config
    return {
        "model": trainer.model.config(),
        "train": {k: v for k, v in dataclasses.asdict(c).items() if k not in MODEL_OPTIONS},
        "data": {"source": corpus.source, "sha256": corpus.sha256,
                 "val_fraction": corpus.val_fraction, "n_train": len(corpus.train),
                 "n_val": len(corpus.val)},
        "backend": {"name": be.name, "device": str(be.device)},
    }  # fmt: skip


def run_to_checkpoint(run: RunState, *, config: dict, vocab: str, backend: Any) -> Checkpoint:
    """Host copy of a :class:`RunState` (device arrays in one transfer per dtype);
    optimizer leaves laid out like the flat parameters are stored per parameter."""
    xp, layout, carry = backend.xp, run.layout, run.carry
    device = {f"param/{k}": v for k, v in layout.unflatten(carry.params, xp).items()}
    for path, leaf in optim.state_arrays(carry.opt_state).items():
        if tuple(leaf.shape) == (layout.size,):
            device.update({f"opt/{path}/{k}": v for k, v in layout.unflatten(leaf, xp).items()})
        else:
            device[f"opt/{path}"] = leaf
    host = backend.to_numpy_many({**device, "hidden": carry.hidden})
    history = {k: np.asarray(v, dtype=np.float64) for k, v in run.history.items()}
    position = {"epoch": run.epoch, "chunk": run.chunk, "offset": run.offset}
    params, opt = ({k[len(p) :]: v for k, v in host.items() if k.startswith(p)}
                   for p in ("param/", "opt/"))  # fmt: skip
    return Checkpoint(params, opt, vocab, run.step, config, host["hidden"],
                      position, run.rng.bit_generator.state, history, dict(run.best))  # fmt: skip


def run_from_checkpoint(ckpt: Checkpoint, *, optimizer: Any, backend: Any, dtype: str) -> RunState:
    """The :class:`RunState` saved in ``ckpt``, on ``backend``: ``optimizer.init``'s state
    filled from the stored arrays (a CheckpointError names one missing or misshapen)."""
    layout = Layout.of(ckpt.params)

    def flat(get: Any) -> np.ndarray:  # (N,)
        return np.concatenate([np.asarray(get(k)).reshape(-1) for k in layout.keys])

    def load(path: str, _: Any, like: Any) -> Any:
        if tuple(like.shape) == (layout.size,):
            stored = flat(lambda k: ckpt.opt_state[f"{path}/{k}"])
        else:
            stored = np.asarray(ckpt.opt_state[path])
        if stored.shape != tuple(like.shape):
            raise CheckpointError(f"checkpoint: optimizer array {path!r} has shape "
                                  f"{stored.shape}, expected {tuple(like.shape)}")  # fmt: skip
        return backend.asarray(stored, dtype=like.dtype)

    params = backend.asarray(flat(ckpt.params.__getitem__), dtype=dtype)
    state = optimizer.init(params)
    try:
        opt_state = optim.state_from_arrays(state, dict.fromkeys(optim.state_arrays(state)), load)
    except KeyError as e:
        raise CheckpointError(f"checkpoint: no optimizer array {e.args[0]!r}: it was written "
                              "for another optimizer; resume with the original "
                              "optimizer=...") from None  # fmt: skip
    rng = np.random.default_rng()
    rng.bit_generator.state = ckpt.rng_state
    counter = backend.xp.full((), ckpt.step, dtype=backend.integer, device=backend.device)
    carry = TrainCarry(params, opt_state, backend.asarray(ckpt.hidden, dtype=dtype), counter)
    history = {k: [float(x) for x in ckpt.history.get(k, ())] for k in HISTORY_KEYS}
    epoch, chunk, offset = (int(ckpt.position[k]) for k in ("epoch", "chunk", "offset"))
    return RunState(carry, layout, rng, ckpt.step, epoch, chunk, offset, history, dict(ckpt.best))
