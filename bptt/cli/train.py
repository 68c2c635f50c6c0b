"""``bptt train``: train a character-level RNN, with progress, validation and checkpoints."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..api.params import INITS
from ..math.cells import CELLS
from ..train.allreduce import ALLREDUCE_MODES
from ._args import (
    FIGURE_SUFFIXES,
    add_backend_arguments,
    check_output_path,
    factor,
    fraction,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    size,
)
from ._output import failure as output_failure

HELP = "train a character-level RNN (built-in text by default), with checkpoints"
DEFAULT_MAX_TEXT_BYTES = 1 << 30  # bptt.host.limits.DEFAULT_MAX_TEXT_BYTES (not imported: --help)

DEFAULT_STEPS = 4000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backend_arguments(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--text", metavar="FILE", help="a UTF-8 text file to train on")
    data.add_argument(
        "--corpus",
        choices=("topics", "stdlib"),
        help="built-in text when --text is not given: 'topics' (the default: Python's reference "
        "manual, pydoc_data.topics, ~465k chars) or 'stdlib' (the standard library's sources, "
        "~4.7 MB). A resumed run defaults to the text it was trained on",
    )
    data.add_argument(
        "--val-fraction", type=fraction, help="held-out tail for validation (default 0.1)"
    )
    data.add_argument(
        "--max-text-size", type=size, metavar="SIZE", default=DEFAULT_MAX_TEXT_BYTES,
        help="refuse a --text larger than this (default 1G; e.g. 4G): only regular files "
        "are read, and their size is checked before reading",
    )  # fmt: skip
    model = parser.add_argument_group("model (fixed once a run starts)")
    model.add_argument("--hidden", type=positive_int, help="hidden units D (default 256)")
    model.add_argument(
        "--layers", type=positive_int,
        help="L stacked recurrent layers (default 1); --dropout then also acts between them",
    )  # fmt: skip
    model.add_argument(
        "--cell", "--nonlinearity", dest="cell", choices=tuple(CELLS),
        help="the recurrent cell of every layer (default tanh)",
    )  # fmt: skip
    model.add_argument(
        "--bidirectional", action="store_true",
        help="refused: a next-character model cannot read the text ahead (see the error)",
    )  # fmt: skip
    model.add_argument("--dtype", choices=("float32", "float64"), help="default float32")
    model.add_argument("--init", choices=INITS, help="default uniform; identity: IRNN (W = I)")
    model.add_argument("--seq-len", type=positive_int, help="T, characters per chunk (default 100)")
    model.add_argument("--batch", type=positive_int, help="B, parallel streams (default 64)")
    model.add_argument(
        "--seed", type=nonneg_int, help="fixes init, stream order, dropout and samples"
    )
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=("sgd", "adagrad", "rmsprop", "adam"), help="adam")
    opt.add_argument(
        "--lr",
        type=positive_float,
        help="learning rate (default 2e-3). With --resume it replaces the stored rate from the "
        "resumed step on (a --lr-decay schedule continues from the global step; optimizer "
        "moments are kept) and is saved in later checkpoints",
    )
    opt.add_argument("--momentum", type=probability, help="for sgd (default 0)")
    opt.add_argument("--clip", type=nonneg_float, help="global gradient norm; 0 = off (default 5)")
    opt.add_argument(
        "--weight-decay", type=nonneg_float,
        help="decoupled weight decay, AdamW-style: p -= lr * lambda * p (default 0)",
    )  # fmt: skip
    opt.add_argument(
        "--l2", type=nonneg_float,
        help="L2 penalty: lambda * p added to the gradient before the optimizer (default 0)",
    )  # fmt: skip
    opt.add_argument("--dropout", type=probability, help="on the states before V (default 0)")
    opt.add_argument("--lr-decay", type=factor, help="factor per --lr-decay-every steps")
    opt.add_argument(
        "--remat", metavar="K|sqrt|budget:M",
        help="memory-bounded BPTT: store every K-th state, every ceil(sqrt T)-th, or at most "
        "M states by Gruslys et al.'s dynamic program; the backward pass recomputes the rest",
    )  # fmt: skip
    opt.add_argument("--lr-decay-every", type=positive_int, help="default 1000")
    run = parser.add_argument_group("run")
    run.add_argument(
        "--steps", type=positive_int, help=f"stop at this global step (default {DEFAULT_STEPS})"
    )
    run.add_argument("--minutes", type=positive_float, help="stop after this much wall time")
    run.add_argument("--eval-every", type=positive_int, help="validate every N steps (200)")
    run.add_argument("--log-every", type=positive_int, help="read the loss every N steps (20)")
    run.add_argument("--patience", type=positive_int, help="early stop after N evals w/o a best")
    run.add_argument("--sample-length", type=positive_int, help="sample shown per eval (200)")
    run.add_argument(
        "--checkpoint-dir", metavar="DIR",
        help="default: a new checkpoints/<date-time>. A directory that holds a run is refused "
        "(continue it with --resume DIR) unless --overwrite",
    )  # fmt: skip
    run.add_argument(
        "--resume", metavar="CKPT",
        help="a checkpoint file or run directory. A run's latest.npz (or its directory) "
        "continues in that directory; any other checkpoint (best.npz, a copy) continues in a "
        "new one, so that no step of the run is lost",
    )  # fmt: skip
    run.add_argument(
        "--overwrite", action="store_true",
        help="let a new run (or a resumed best.npz) replace the run in --checkpoint-dir",
    )  # fmt: skip
    run.add_argument("--plot", metavar="FILE.png", help="write training/validation curves")
    run.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    run.add_argument(
        "--compile", choices=("auto", "none", "jit", "cuda-graph"), default="auto",
        help="how the training step runs: auto (jax.jit on --backend jax, eager elsewhere), "
        "none, jit (JAX only) or cuda-graph (CuPy or torch on CUDA: captured once, replayed "
        "each step)",
    )  # fmt: skip
    run.add_argument(
        "--cuda-graph", action="store_const", const="cuda-graph", dest="compile",
        help="the same as --compile cuda-graph",
    )  # fmt: skip
    run.add_argument(
        "--tune-malloc", action="store_true",
        help="raise glibc's malloc thresholds for this process, so that a NumPy step reuses "
        "the memory the last one freed (bptt.host.malloc; see the README for its measured effect)",
    )  # fmt: skip
    ranks = parser.add_argument_group("data-parallel (mpiexec -n N bptt train ...; bptt[mpi])")
    ranks.add_argument(
        "--distributed", choices=("auto", "mpi", "none"), default="auto",
        help="auto (the default): data-parallel over MPI when started by mpiexec with 2 or "
        "more processes, else one process; mpi: always over MPI (also on one rank); none: "
        "never (each process a run of its own)",
    )  # fmt: skip
    ranks.add_argument(
        "--allreduce", choices=ALLREDUCE_MODES, default="auto",
        help="how gradients are summed: auto (NumPy: mpi; CuPy: nccl, else host; others: "
        "host), mpi (on the buffer itself: NumPy, or CuPy with a CUDA-aware MPI), nccl (CuPy), "
        "host (one host copy of the buffer per step, any backend)",
    )  # fmt: skip
    ranks.add_argument(
        "--rank-timeout", type=nonneg_float, default=300.0, metavar="SECONDS",
        help="end every rank (MPI_Abort) when one waits this long for the others in a "
        "collective: a rank that hangs or was cut off (default 300; 0: wait forever)",
    )  # fmt: skip
    ranks.add_argument(
        "--start-timeout", type=nonneg_float, default=60.0, metavar="SECONDS",
        help="end the job when its ranks have not all started MPI within this long: a rank "
        "that exited or failed before starting it (default 60; 0: wait forever)",
    )  # fmt: skip


MODEL_OPTIONS = ("hidden", "layers", "cell", "dtype", "init", "seq_len", "batch", "seed",
                 "optimizer", "momentum")  # fmt: skip

BIDIRECTIONAL_REFUSED = (
    "--bidirectional: a next-character model predicts each character from those before "
    "it, and a reverse pass would read the very character it is asked to predict (and all "
    "after it), so its loss would say nothing about the text; bidirectional layers are for "
    "tasks that see the whole sequence, such as tagging: bptt.init_params(..., "
    "bidirectional=True), see examples/bidirectional_tagging.py"
)


class _Progress:
    """tqdm bar with loss, bits/char and chars/s; plain lines when tqdm is missing."""

    def __init__(self, total: int | None, initial: int, plain: bool, step: Any = None) -> None:
        self.bar, self.step = None, step  # step: the CompiledStep, whose compile time is told once
        if not plain:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
            except ImportError:
                pass

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def on_step(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
        seconds = getattr(self.step, "compile_seconds", None)
        if seconds is not None:
            self.write(f"step {step}: the step compiled in {seconds:.2f} s ({self.step.mode})")
            self.step = None

    def on_log(self, step: int, bpc: float, chars_per_s: float) -> None:
        import math

        stats = f"loss {bpc * math.log(2):.3f}, {bpc:.3f} bits/char, {chars_per_s:,.0f} chars/s"
        if self.bar is not None:
            self.bar.set_postfix_str(stats, refresh=False)
        else:
            print(f"step {step}: {stats}", flush=True)

    def on_eval(self, step: int, val_bpc: float, is_best: bool, text: str) -> None:
        mark = " (best)" if is_best else ""
        self.write(f"step {step}: validation {val_bpc:.4f} bits/char{mark}")
        self.write("  | " + text.replace("\n", "\n  | "))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def stop_reason(result: Any, trainer: Any) -> str:
    """Why a run stopped, in words; after a long stretch without a new best, what
    ``--patience`` would have saved."""
    c, best = trainer.config, trainer.best
    if result.reason == "early_stop":
        return (
            f"early stopping: no new best validation in the last {c.patience} evaluations "
            f"(--patience {c.patience}, one every {c.eval_every} steps)"
        )
    reason = {"steps": "the step budget is reached", "time": "the time budget is reached",
              "interrupted": "interrupted"}.get(result.reason, result.reason)  # fmt: skip
    since = best.get("evals_since", 0)
    if since >= 5 and (c.patience is None or c.patience > 5) and result.best_step is not None:
        stop_at = result.best_step + 5 * c.eval_every
        reason += (
            f"; the best validation was {since} evaluations ago (--patience 5 would have "
            f"stopped at step {stop_at})"
        )
    return reason


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from ..train import RESUMABLE

    names = (*MODEL_OPTIONS, *RESUMABLE)  # those without a command-line option stay unset
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _data_options(args: argparse.Namespace, stored: dict[str, Any]) -> dict[str, Any]:
    """The text to resume on: as given, else the one the checkpoint was trained on."""
    source = stored.get("source", "corpus:topics")
    options: dict[str, Any] = {"val_fraction": stored.get("val_fraction", 0.1),
                               "max_bytes": args.max_text_size}  # fmt: skip
    if args.val_fraction is not None:
        options["val_fraction"] = args.val_fraction
    if args.text is not None:
        options["text"] = args.text
    elif args.corpus is not None:
        options["corpus"] = args.corpus
    elif source.startswith("corpus:"):
        options["corpus"] = source.removeprefix("corpus:")
    else:
        options["text"] = source
    return options


def _build(args: argparse.Namespace, comm: Any) -> tuple[Any, str, Path | None]:
    """The trainer, a note on what a resume changed (the learning rate) or "", and the
    checkpoint file resumed from (None for a new run)."""
    from ..text.data import load_corpus
    from ..train import TrainConfig, Trainer
    from ..train.checkpoint import load_checkpoint, resolve_path
    from ..train.distributed import rank_backend

    if args.text is not None and args.corpus is not None:
        raise ValueError("--text and --corpus: give one of them (the text to train on)")
    be = rank_backend(args.backend, args.device, comm)  # on several ranks, a GPU each
    ranks = {"comm": comm, "allreduce": args.allreduce, "compile": args.compile}
    options = _config_overrides(args)
    if args.resume is None:
        corpus = load_corpus(
            text=args.text,
            corpus=args.corpus or "topics",
            val_fraction=0.1 if args.val_fraction is None else args.val_fraction,
            max_bytes=args.max_text_size,
        )
        config = TrainConfig(**options)
        return Trainer.create(corpus, config, backend=be, **ranks), "", None
    path = resolve_path(args.resume)
    ckpt = load_checkpoint(path)
    corpus = load_corpus(**_data_options(args, ckpt.config.get("data", {})))
    stored = dataclasses.asdict(ckpt.train)
    was = {k: stored[k] for k in MODEL_OPTIONS}
    fixed = [k for k in MODEL_OPTIONS if k in options and options[k] != was[k]]
    if "hidden" in fixed:
        ckpt.check_sizes(D=options["hidden"])  # the wrong-size message
    if fixed:
        flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
        raise ValueError(f"{flags}: cannot change when resuming (the checkpoint has {stored})")
    overrides = {k: v for k, v in options.items() if k not in MODEL_OPTIONS}
    trainer = Trainer.resume(ckpt, corpus, backend=be, **ranks, **overrides)
    old_lr = stored.get("lr")
    note = f"; lr {trainer.config.lr:g} (was {old_lr:g})" if old_lr != trainer.config.lr else ""
    return trainer, note, path


def _same_directory(a: Path, b: Path) -> bool:
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _directory(args: argparse.Namespace, resumed: Path | None, step: int) -> tuple[Path, bool]:
    """(where this run writes, whether it continues the run resumed there). A run's
    latest.npz continues in its directory; any other checkpoint (best.npz, a copy) in a
    new one, or in --checkpoint-dir."""
    from ..train.checkpoint import LATEST
    from ..train.rundir import new_run_directory

    if resumed is not None:
        home = resumed.parent
        if args.checkpoint_dir is None:  # the run's latest continues there, all else anew
            return (home, True) if resumed.name == LATEST else (new_run_directory(), False)
        target = Path(args.checkpoint_dir)
        same = target.exists() and _same_directory(target, home)
        if same and resumed.name == LATEST:
            return target, True
        if same and not args.overwrite:
            raise ValueError(
                f"--resume {resumed}: continuing it in {home} would replace that run's "
                f"latest.npz, and with it the steps after step {step}: leave out "
                "--checkpoint-dir to continue in a new directory, or add --overwrite"
            )
        return target, False
    if args.checkpoint_dir is None:
        return new_run_directory(), False
    return Path(args.checkpoint_dir), False


def _claim(args: argparse.Namespace, trainer: Any, resumed: Path | None) -> list[str]:
    """Lock the run directory, refuse one that holds another run (unless --overwrite),
    prove the room for checkpoints, then make latest.npz and best.npz agree. Notes.
    On failure the lock goes, and a directory this run made and left empty too."""
    from ..train.rundir import LOCK_NAME

    directory, in_place = _directory(args, resumed, trainer.step)
    trainer.checkpoint_dir = directory
    trainer.lock_directory()
    try:
        return _settle(args, trainer, resumed, directory, in_place)
    except BaseException:
        trainer.unlock_directory()
        if not any(p.name != LOCK_NAME for p in directory.iterdir()):  # nothing of a run
            (directory / LOCK_NAME).unlink(missing_ok=True)
            if args.checkpoint_dir is None:  # the new default directory this run made
                directory.rmdir()
        raise


def _settle(args: argparse.Namespace, trainer: Any, resumed: Path | None, directory: Path,
            in_place: bool) -> list[str]:  # fmt: skip
    from ..train.checkpoint import BEST, LATEST, check_writable
    from ..train.rundir import carry_best, held_run, reconcile_best

    held = None if in_place else held_run(directory)
    if held is not None and not args.overwrite:
        raise ValueError(
            f"--checkpoint-dir {directory}: it already holds a run ({held}); continue that "
            f"run with  bptt train --resume {directory}  , or train in a new directory "
            "(another --checkpoint-dir, or none for a new checkpoints/<date-time>); "
            "--overwrite replaces it"
        )
    check_writable(directory, nbytes=2 * trainer.checkpoint_bytes())  # at start
    notes = []
    if held is not None:  # --overwrite: the old run's files go, after every check passed
        keep = resumed if resumed is not None and resumed.name == BEST else None
        for name in (LATEST, BEST):
            if keep is None or not _same_directory(directory / name, keep):
                (directory / name).unlink(missing_ok=True)
        notes.append(f"replaced the run in {directory} ({held}): --overwrite")
    if resumed is not None:
        best = trainer.state.best
        note = (reconcile_best(best, directory) if in_place or held is not None
                else carry_best(best, resumed, trainer.step, directory))  # fmt: skip
        if not in_place:
            notes.append(f"continuing {resumed} (step {trainer.step}) in {directory}; "
                         f"{resumed.parent} is left as it is")  # fmt: skip
        notes += [note] if note else []
    return notes


def _architecture(c: Any) -> str:
    """ " L=2, relu," for what differs from one tanh layer; "" for the default model."""
    parts = ([f"L={c.layers}"] if c.layers > 1 else []) + ([c.cell] if c.cell != "tanh" else [])
    return "".join(f" {part}," for part in parts)


# Signals that stop training cleanly: finish the step, validate, save, exit 128 + signal.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name)
)


def _communicator(args: argparse.Namespace) -> Any:
    """bptt.train.distributed.Local for one process, else a Communicator over MPI.COMM_WORLD;
    one line and exit 2 (from the launcher's rank 0 only) when MPI is asked for and
    missing."""
    from ..train import distributed

    size = distributed.launched_size()
    wanted = args.distributed == "mpi" or (args.distributed == "auto" and size > 1)
    start = {"timeout": args.rank_timeout or None, "start_timeout": args.start_timeout or None}
    if not wanted:
        if size > 1 and importlib.util.find_spec("mpi4py") is not None:
            _agree_alone(args, start)  # every rank of the job said none, or all refuse
        return distributed.Local()
    try:
        return distributed.Communicator(**start)
    except distributed.MPIUnavailableError as e:
        size = distributed.launched_size()
        started = f"started as one of {size} processes; " if size > 1 else ""
        _refuse(args, f"{started}{e}", root=distributed.launched_rank() == 0)


def _agree_alone(args: argparse.Namespace, start: dict[str, Any]) -> None:
    """``--distributed none`` under a launcher: meet the other ranks once, in the start-up
    agreement, so that a job where only some ranks said none refuses on every rank (one
    line, exit 2) instead of leaving the others waiting for this one."""
    from ..train import distributed

    comm = distributed.Communicator(**start)
    try:
        with comm.startup(distributed="none"):
            pass
    except distributed.StartupError as e:
        _refuse(args, str(e), root=comm.is_root)


def _refuse(args: argparse.Namespace, message: str, *, root: bool) -> None:
    """One ``error:`` line and exit 2; on several ranks only rank 0 prints it (every rank
    has the same line to say: the start-up agreement gave it to all)."""
    if root:
        args._parser.error(message)
    raise SystemExit(2)


def run(args: argparse.Namespace) -> int:
    from .. import backends
    from ..text.data import DataError
    from ..train.checkpoint import CheckpointError

    comm = _communicator(args)
    trainer = None
    try:
        with comm.startup(steps=args.steps, minutes=args.minutes, distributed="mpi"):
            # every rank built its run, with the same options: one collective
            if args.bidirectional:  # refused on every rank alike, after MPI started
                raise ValueError(BIDIRECTIONAL_REFUSED)
            check_output_path(args.plot, "--plot", suffixes=FIGURE_SUFFIXES)  # before any work
            if args.plot is not None:
                if importlib.util.find_spec("matplotlib") is None:
                    raise ValueError("--plot needs matplotlib: pip install 'bptt[plot]'")
            trainer, note, resumed = _build(args, comm)
            if args.steps is not None and args.steps <= trainer.step:
                raise ValueError(f"--steps {args.steps}: the checkpoint is already at step "
                                 f"{trainer.step}")  # fmt: skip
            if args.steps is None and args.minutes is None and DEFAULT_STEPS <= trainer.step:
                raise ValueError(f"--steps {DEFAULT_STEPS}: the checkpoint is already at step "
                                 f"{trainer.step}")  # fmt: skip  # the default, on a longer run
        notes: list[str] = []
        with comm.startup("claim the run directory") as shared:  # rank 0 alone claims it
            if comm.is_root:
                notes = _claim(args, trainer, resumed)
                shared["directory"] = str(trainer.checkpoint_dir)
        if not comm.is_root:  # the directory rank 0 writes (named in messages)
            trainer.checkpoint_dir = Path(shared["directory"])
    except (DataError, CheckpointError, backends.BackendError, ValueError) as e:
        if trainer is not None:
            trainer.unlock_directory()
        _refuse(args, str(e), root=comm.is_root)
    try:
        return _train(args, trainer, note, notes)
    finally:
        trainer.unlock_directory()


def _train(args: argparse.Namespace, trainer: Any, note: str, notes: list[str]) -> int:
    """The run, with its directory locked: banner, signals, the loop, the last lines. On
    several ranks an error that is not every rank's ends them all (MPI_Abort)."""
    from ..train.distributed import abort_on_error

    with abort_on_error(trainer.comm, prefix="bptt train"):
        return _train_ranks(args, trainer, note, notes)


def _train_ranks(args: argparse.Namespace, trainer: Any, note: str, notes: list[str]) -> int:
    from ..train import NonFiniteError, Reporter
    from ..train.checkpoint import CheckpointError
    from ..train.distributed import RanksDivergedError

    comm = trainer.comm
    if args.tune_malloc:  # reuse what a step frees (bptt.host.malloc); before the first step
        from ..host.malloc import tune_malloc

        tune_malloc()
    c, be = trainer.config, trainer.backend
    steps = args.steps if args.steps is not None or args.minutes is not None else DEFAULT_STEPS
    if comm.size > 1:
        from ..train.distributed import share_cpus

        shared = share_cpus(comm) if be.name == "numpy" else None  # threads per rank
        notes = [*notes, _ranks_note(trainer), *([shared] if shared else [])]
    say = print if comm.is_root else (lambda *a, **k: None)  # rank 0 alone logs
    say(
        f"bptt train: {trainer.corpus.source} ({len(trainer.corpus.train):,} train / "
        f"{len(trainer.corpus.val):,} validation chars, {len(trainer.corpus.vocab)} symbols)\n"
        f"  backend {be.name} on {be.device}, {c.dtype}, D={c.hidden} B={c.batch} T={c.seq_len},"
        f"{_architecture(c)} {c.optimizer} lr {c.lr:g}, clip {c.clip:g}, dropout {c.dropout:g}, "
        f"weight decay {c.weight_decay:g}, l2 {c.l2:g}, seed {c.seed}\n"
        f"  step: {trainer.train_step.description}\n"
        f"  checkpoints: {trainer.checkpoint_dir}"
        + (f" (resuming at step {trainer.step}{note})" if trainer.step else "")
        + "".join(f"\n  note: {n}" for n in notes),
        flush=True,
    )
    stop: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stop.append(signum)
        signal.signal(signum, signal.default_int_handler)  # a second one stops at once

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    progress: Any = Reporter()  # ranks other than 0: silent
    if comm.is_root:
        progress = _Progress(steps, trainer.step, args.no_progress, trainer.train_step)
    resume_hint = f"resume with  bptt train --resume {trainer.checkpoint_dir}"
    t0 = time.perf_counter()
    try:
        result = trainer.run(
            steps=steps,
            minutes=args.minutes,
            reporter=progress,
            should_stop=lambda: bool(stop) or output_failure() is not None,  # as Ctrl-C
        )
    except (NonFiniteError, CheckpointError, RanksDivergedError) as e:  # every rank's
        _close(progress)
        say(f"bptt train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the second signal: no final checkpoint
        _close(progress)
        if comm.size > 1:
            raise  # another rank may be past it: abort_on_error ends them all
        hint = resume_hint if trainer.written or trainer.resumed_at else (
            "no checkpoint was written: start the run again")  # fmt: skip
        print(
            f"bptt train: stopped at step {trainer.step} without a final checkpoint "
            f"(second interrupt); {hint}",
            file=sys.stderr,
        )
        return 128 + (stop[-1] if stop else signal.SIGINT)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _close(progress)
    elapsed = time.perf_counter() - t0
    say(
        f"stopped at step {result.step} after {elapsed:.0f} s: {stop_reason(result, trainer)}\n"
        f"  last validation {result.last_val:.4f} bits/char, best {result.best_val:.4f} "
        f"at step {result.best_step}\n  latest: {result.latest}\n  best:   {result.best}"
    )
    saved = f"step {result.step} saved in {result.latest}"
    failed = _plot(args, trainer) if comm.is_root else None
    broken = output_failure()  # stdout or stderr failed: the loop stopped as on Ctrl-C
    if broken is not None or failed is not None:
        with contextlib.suppress(OSError, ValueError):
            print(f"bptt train: error: {broken or failed}" + (f" at step {result.step}" if broken
                  else "") + f"; {saved}: {resume_hint}", file=sys.stderr)  # fmt: skip
        return 1
    if result.reason == "interrupted":
        say(f"interrupted: {resume_hint}  (step {result.step} saved in {result.latest})")
        return 128 + (stop[0] if stop else signal.SIGINT)  # ranks: another rank's signal
    return 0


def _plot(args: argparse.Namespace, trainer: Any) -> str | None:
    """Write --plot; what went wrong, or None. The run is saved before: a plot that
    cannot be written (its directory went away) is one line at the end."""
    if args.plot is None:
        return None
    from ..host.plot import plot_history

    c = trainer.config
    try:
        plot_history(trainer.history, args.plot, title=f"{trainer.corpus.source}, D={c.hidden}")
    except OSError as e:
        return f"--plot: cannot write {args.plot!r}: {e.strerror or e}"
    print(f"  plot:   {args.plot}")
    return None


def _close(progress: Any) -> None:
    if isinstance(progress, _Progress):
        progress.close()


def _ranks_note(trainer: Any) -> str:
    comm, shard = trainer.comm, trainer.shard
    hosts = "one machine" if comm.local_size == comm.size else "several machines"
    return (f"data-parallel: {comm.size} ranks on {hosts} ({comm.local_size} here), "
            f"{shard.local} of the {shard.batch} streams each; rank 0 writes")  # fmt: skip
