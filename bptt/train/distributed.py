"""Data-parallel training across processes: one MPI communicator and what runs over it.

``mpiexec -n N bptt train ...`` (or :class:`bptt.train.Trainer` given ``comm=``) runs N
ranks, each training on B/N of the B streams. This module is everything they say to
each other, and the only place bptt talks MPI (mpi4py, imported when first asked for:
it is the optional ``bptt[mpi]``):

- :class:`Communicator`: a duplicate of the caller's MPI communicator (so bptt's
  collectives never mix with the caller's), with the start-up agreement (every rank
  reports whether it could start, and with which options: one collective, and a
  refusal on every rank when any failed or differs), the stop vote (Ctrl-C, a
  deadline: every rank stops at the same step), the check that every rank holds the
  same parameters, the validation sum, the gather of the hidden state for a
  checkpoint, and a watchdog that aborts the job when a collective waits too long.
- :class:`Local`: the same interface for one process; every method is free (no
  device operation, no host read), so the single-process run is what it was.
- how the flat gradient buffer is summed on each backend (MPI in place, NCCL, one
  host copy) is :mod:`bptt.train.allreduce`.
- :func:`abort_on_error`: an exception on one rank prints a line and ends every rank
  (``MPI_Abort``), instead of leaving the others in a collective forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "INSTALL_HINT",
    "Communicator",
    "Local",
    "MPIUnavailableError",
    "RanksDivergedError",
    "Shard",
    "StartupError",
    "abort_on_error",
    "as_communicator",
    "launched_rank",
    "launched_size",
    "mpi",
    "rank_backend",
    "report_exit",
    "share_cpus",
]

INSTALL_HINT = "pip install 'bptt[mpi]' (mpi4py and the mpich wheel, which brings mpiexec)"
DEFAULT_TIMEOUT = 300.0  # seconds a rank waits in one collective before it aborts the job
DEFAULT_START_TIMEOUT = 60.0  # seconds a rank waits for every rank to start MPI

# What launchers tell each process: MPICH's hydra and Intel MPI (PMI), Open MPI, MVAPICH.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


class MPIUnavailableError(ImportError):
    """Data-parallel training was asked for, but mpi4py (or an MPI library) is missing."""


class StartupError(ValueError):
    """Another rank could not start, or the ranks were started with different options."""


class RanksDivergedError(RuntimeError):
    """The ranks' parameters differ: the run stops on every rank."""


def mpi() -> Any:
    """``mpi4py.MPI`` (initialising MPI on first use), or MPIUnavailableError saying
    how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise MPIUnavailableError(
            f"data-parallel training needs mpi4py and an MPI library ({e}): {INSTALL_HINT}"
        ) from None
    return MPI


# The start-up guard, a separate process: MPI_Init holds the GIL while it waits for every
# rank (no thread of this process can run), so only another process can end the wait.
_GUARD = """
import os, select, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher's Ctrl-C is the rank's
pid, timeout, line = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if select.select([sys.stdin], [], [], timeout)[0]:
    sys.exit(0)  # started (or the rank ended: its end of the pipe closed)
try:
    os.kill(pid, 0)
except OSError:
    sys.exit(0)
sys.stderr.write(line + "\\n")
sys.stderr.flush()
os.kill(pid, signal.SIGKILL)  # the launcher then ends every rank
"""


class _StartGuard:
    """Ends this process (SIGKILL, after one line on stderr) unless :meth:`done` is
    called within ``timeout`` seconds; under a launcher of N > 1 processes only. Rank r
    waits r / 2 s more (at most 5), so that the first rank to give up speaks for all:
    the launcher ends the others when one is killed."""

    def __init__(self, timeout: float | None) -> None:
        self.proc = None
        size, rank = launched_size(), launched_rank()
        if not timeout or size <= 1 or "mpi4py.MPI" in sys.modules or os.name != "posix":
            return  # (select on a pipe: POSIX)
        import subprocess

        line = (
            f"bptt: rank {rank} of {size}: the {size} ranks did not all start MPI within "
            f"{timeout:g} s (--start-timeout): another rank ended or failed before starting "
            "MPI (see its message, if any), or was started with another command; ending the job"
        )
        wait = float(timeout) + min(rank, 10) / 2
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _GUARD, str(os.getpid()), str(wait), line],
            stdin=subprocess.PIPE,
        )  # fmt: skip

    def done(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            proc.stdin.close()  # EOF: the guard exits
            proc.wait()


def report_exit(message: str, *, start_timeout: float | None = DEFAULT_START_TIMEOUT) -> None:
    """Under a launcher of N > 1 processes, tell the ranks that wait to train that this
    one will not (its options did not parse, ``--version``, ...): it meets them in the
    start-up agreement as a rank that could not start, so that every rank refuses with
    ``message`` at once instead of waiting for it. Nothing without a launcher or mpi4py;
    bounded by ``start_timeout`` like any start."""
    import importlib.util

    if launched_size() <= 1 or importlib.util.find_spec("mpi4py") is None:
        return
    with contextlib.suppress(Exception):
        comm = Communicator(timeout=start_timeout, start_timeout=start_timeout)
        with comm.startup():
            raise StartupError(message)


def _env_int(names: tuple[str, ...]) -> int | None:
    for name in names:
        text = os.environ.get(name, "")
        if text.strip().isdigit():
            return int(text)
    return None


def launched_size() -> int:
    """How many processes the launcher (mpiexec, mpirun) started, from its environment;
    1 when this process was not started by one. Reads no MPI."""
    return _env_int(_SIZE_VARS) or 1


def launched_rank() -> int:
    """This process's rank as the launcher's environment says (0 without one)."""
    return _env_int(_RANK_VARS) or 0


class Shard(NamedTuple):
    """The streams one rank trains on: ``[start, stop)`` of the ``batch`` streams."""

    rank: int
    size: int
    batch: int  # B: every rank's streams together
    start: int
    stop: int

    @property
    def local(self) -> int:
        return self.stop - self.start

    @classmethod
    def of(cls, batch: int, rank: int, size: int) -> Shard:
        """Rank ``rank``'s B/N streams; ValueError (naming the fix) unless N divides B."""
        if batch % size:
            lower, upper = (batch // size) * size, (batch // size + 1) * size
            fits = f"--batch {lower} or {upper}" if lower else f"--batch {upper}"
            raise ValueError(
                f"--batch {batch}: data-parallel training on {size} ranks needs a batch "
                f"divisible by the number of ranks (each rank takes B/N of the B streams); "
                f"use {fits}, or a number of ranks that divides {batch}"
            )
        part = batch // size
        return cls(rank, size, batch, rank * part, (rank + 1) * part)


def rank_backend(name: str | None, device: Any, comm: Any) -> Any:
    """The backend a rank trains on: ``name`` on ``device``; on several ranks with no
    device named, CuPy (and torch ``cuda``) take GPU ``local_rank % GPUs`` of their
    machine, so that the ranks of one machine spread over its GPUs."""
    from .. import backends

    resolved = backends.resolve_name(name)
    if comm.size == 1 or resolved not in ("cupy", "torch"):
        return backends.get_backend(resolved, device)
    if resolved == "cupy" and device is None:
        with contextlib.suppress(Exception):  # no CuPy or no GPU: get_backend says why
            import cupy

            device = comm.local_rank % max(1, cupy.cuda.runtime.getDeviceCount())
    elif resolved == "torch" and str(device) == "cuda":
        import torch

        device = f"cuda:{comm.local_rank % max(1, torch.cuda.device_count())}"
    return backends.get_backend(resolved, device)


def share_cpus(comm: Any) -> str | None:
    """Several ranks on one machine: give each its share of the CPUs (BPTT_THREADS and
    the BLAS threads), unless the user chose (BPTT_THREADS, OMP_NUM_THREADS,
    OPENBLAS_NUM_THREADS or MKL_NUM_THREADS set). Returns a note saying so, or None."""
    chosen = ("BPTT_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    if comm.local_size <= 1 or any(os.environ.get(v) for v in chosen):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cpus or 1) // comm.local_size)
    os.environ["BPTT_THREADS"] = str(threads)  # the NumPy schedules' threads
    from ..execution.numpy_exec.threads import blas_controller

    blas = blas_controller()
    if blas is not None:
        blas.limit(limits=threads)  # process-wide, for the rest of the run
    return (f"{comm.local_size} ranks share this machine's {cpus} CPUs: {threads} thread(s) "
            "each (set BPTT_THREADS or OMP_NUM_THREADS to choose)")  # fmt: skip


# ---- one process ---------------------------------------------------------------------------


class Local:
    """One process: the Communicator's interface, doing nothing (no device operation,
    no host read, no collective)."""

    rank, size, local_rank, local_size, host = 0, 1, 0, 1, "localhost"
    is_root = True
    saved: str | None = None  # the last checkpoint this run wrote ("FILE (step N)")

    def saved_note(self) -> str:
        return _saved_note(self.saved, root=True)

    def shard(self, batch: int) -> Shard:
        return Shard(0, 1, batch, 0, batch)

    @contextlib.contextmanager
    def startup(self, what: str = "start", error: type = ValueError,
                **fingerprint: Any) -> Iterator[dict[str, Any]]:  # fmt: skip
        yield {}

    def agree_stop(self, timed_out: bool, stopped: bool) -> tuple[bool, bool]:
        return timed_out, stopped

    def end_votes(self) -> None:
        """No vote is outstanding."""

    def check_same(self, flat: Any, step: int, backend: Any) -> None:
        """One process holds one copy of the parameters."""

    def sum_floats(self, value: float) -> float:
        return value

    def gather_batch(self, local: Any, backend: Any) -> np.ndarray | None:
        return None  # the caller's own array is the whole batch

    def watch(self, what: str) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def abort(self, code: int) -> None:
        raise SystemExit(code)


def as_communicator(comm: Any) -> Local | Communicator:
    """``None`` -> :class:`Local`; a Communicator as it is; an mpi4py communicator
    wrapped (duplicated) in a :class:`Communicator`."""
    if comm is None:
        return Local()
    if isinstance(comm, (Local, Communicator)):
        return comm
    return Communicator(comm)


# ---- several processes ----------------------------------------------------------------------


class Communicator:
    """Collectives of a data-parallel run over an MPI communicator (default
    ``MPI.COMM_WORLD``), duplicated so that they never match a collective of the caller.

    ``timeout`` (seconds, None for none): a watchdog thread aborts every rank
    (``MPI_Abort``) when one collective or device read waits longer than this, with
    a line saying where; a rank that dies outright is ended by the launcher itself
    (MPICH's mpiexec kills the others at once). ``start_timeout`` (seconds, None for
    none): under a launcher, a rank whose MPI start-up (``MPI_Init``, which waits for
    every rank) lasts longer ends itself with a line, and the launcher the others: a
    rank that exited before starting MPI never leaves the others waiting.
    """

    def __init__(self, comm: Any = None, *, timeout: float | None = DEFAULT_TIMEOUT,
                 start_timeout: float | None = DEFAULT_START_TIMEOUT) -> None:  # fmt: skip
        guard = _StartGuard(start_timeout)  # MPI_Init waits for every rank: bounded
        try:
            MPI = mpi()
            self.MPI = MPI
            self.comm = (MPI.COMM_WORLD if comm is None else comm).Dup()
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
            node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
        finally:
            guard.done()
        self.host = MPI.Get_processor_name()
        self.is_root = self.rank == 0
        self._deferred: dict[str, Any] | None = None  # fingerprint of an open startup()
        self._vote: Any = None  # the outstanding stop vote
        self._ballot = np.zeros(2, np.int32)
        self._tally = np.zeros(2, np.int32)
        self.watchdog = _Watchdog(self, timeout) if timeout else None

    saved: str | None = None  # the last checkpoint this run wrote ("FILE (step N)")

    def __repr__(self) -> str:
        return f"Communicator(rank {self.rank} of {self.size} on {self.host})"

    def saved_note(self) -> str:
        """What to do after the job ends: resume from the last checkpoint this run
        wrote, or, when it wrote none, start again (a message never names a checkpoint
        that does not exist; a rank other than 0 may not know of the last one rank 0
        wrote, and says so)."""
        return _saved_note(self.saved, root=self.is_root)

    @property
    def who(self) -> str:
        return f"rank {self.rank} of {self.size} ({self.host})"

    def shard(self, batch: int) -> Shard:
        return Shard.of(batch, self.rank, self.size)

    def watch(self, what: str) -> contextlib.AbstractContextManager[Any]:
        """The block waits on other ranks: the watchdog ends the job if it lasts too long."""
        return contextlib.nullcontext() if self.watchdog is None else self.watchdog.watch(what)

    def abort(self, code: int) -> None:
        """End every rank of the job now (``MPI_Abort``), with exit status ``code``."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    # ---- agreement at start ------------------------------------------------------------

    @contextlib.contextmanager
    def startup(self, what: str = "start", error: type = StartupError,
                **fingerprint: Any) -> Iterator[dict[str, Any]]:  # fmt: skip
        """A block of work that every rank runs, ending in one collective: every rank
        learns whether all got through it (``what``: "start", "write a checkpoint"),
        with the same ``fingerprint`` (options that must agree). On any failure or
        difference, every rank raises: the failing rank its own error, the others
        ``error`` (a :class:`StartupError` by default) naming it. Nested blocks add
        their fingerprint to the outermost one, which alone agrees (so a rank that fails
        before an inner block still meets the others in the same collective).

        Yields a dict: what rank 0 puts there reaches every rank (e.g. a directory name).
        """
        if self._deferred is not None:  # inside another block: it agrees for both
            self._deferred.update(fingerprint)
            yield self._deferred.setdefault("_shared", {})
            return
        self._deferred = dict(fingerprint)
        shared: dict[str, Any] = self._deferred.setdefault("_shared", {})
        failure: BaseException | None = None
        try:
            yield shared
        except Exception as e:  # reported to the others below, then raised again
            failure = e
        finally:
            deferred, self._deferred = self._deferred, None
        deferred.pop("_shared", None)
        self._agree(failure, deferred, shared, what, error)

    def _agree(self, failure: BaseException | None, fingerprint: dict, shared: dict,
               what: str, error: type) -> None:  # fmt: skip
        mine = (None if failure is None else f"{failure}", _canonical(fingerprint), shared)
        with self.watch(f"the agreement to {what}"):
            every = self.comm.allgather((mine, self.host))
        if failure is not None:
            raise failure
        failed = [(r, host, e) for r, ((e, _, _), host) in enumerate(every) if e is not None]
        if failed:
            r, host, message = failed[0]
            more = f" (and {len(failed) - 1} more ranks)" if len(failed) > 1 else ""
            raise error(f"rank {r} of {self.size} ({host}) could not {what}{more}: {message}")
        differs = _first_difference([fp for (_, fp, _), _ in every])
        if differs is not None:
            raise StartupError(differs)
        shared.update(every[0][0][2])  # what rank 0 shared

    # ---- while training ----------------------------------------------------------------

    def agree_stop(self, timed_out: bool, stopped: bool) -> tuple[bool, bool]:
        """Vote to stop (the deadline passed, a signal came) and return the OR over the
        ranks of the votes cast at the previous call: every rank stops at the same step,
        one step after the first rank voted. The vote overlaps the step (a non-blocking
        all-reduce of two integers, waited for at the next call)."""
        agreed = (False, False)
        if self._vote is not None:
            with self.watch("the stop vote"):
                self._vote.Wait()
            self._vote = None
            agreed = (bool(self._tally[0]), bool(self._tally[1]))
            if any(agreed):
                return agreed  # no new vote: the loop ends here on every rank
        self._ballot[:] = (timed_out, stopped)
        self._vote = self.comm.Iallreduce(self._ballot, self._tally, op=self.MPI.MAX)
        return agreed

    def end_votes(self) -> None:
        """Complete the outstanding vote (every rank has cast it)."""
        if self._vote is not None:
            with self.watch("the stop vote"):
                self._vote.Wait()
            self._vote = None

    def check_same(self, flat: Any, step: int, backend: Any) -> None:
        """RanksDivergedError on every rank unless every rank holds the same parameters,
        to the bit: a CRC-32 of the flat vector's bytes (one host copy of it: none on
        NumPy), compared with one all-reduce of two integers."""
        host = np.ascontiguousarray(backend.to_numpy(flat))  # (N,)
        crc = zlib.crc32(memoryview(host).cast("B"))
        both = np.array([crc, -crc], dtype=np.int64)  # max of -x is -min of x
        with self.watch("the parameter check"):
            self.comm.Allreduce(self.MPI.IN_PLACE, both, op=self.MPI.MAX)
        if both[0] != -both[1]:
            raise RanksDivergedError(
                f"training stopped: the ranks' parameters differ at step {step} (their "
                f"CRC-32s range from {-both[1]:#010x} to {both[0]:#010x}): the ranks no longer "
                f"train one model. {self.saved_note()}"
            )

    def sum_floats(self, value: float) -> float:
        """The sum over ranks of ``value``, in rank order: the same bits on every rank."""
        with self.watch("the validation sum"):
            parts = self.comm.allgather(float(value))
        return float(sum(parts))

    def gather_batch(self, local: Any, backend: Any) -> np.ndarray | None:
        """Every rank's ``local`` (…, B/N, D) joined on rank 0 along the batch axis (the
        second last) in rank order: (…, B, D) on rank 0, None elsewhere. For checkpoints."""
        host = np.ascontiguousarray(backend.to_numpy(local))
        with self.watch("gathering the hidden state"):
            parts = self.comm.gather(host, root=0)
        return None if parts is None else np.concatenate(parts, axis=-2)

    def bcast_nccl_id(self, make: Any) -> Any:
        """``make()`` on rank 0 (an NCCL unique id), the same value on every rank."""
        with self.watch("setting up NCCL"):
            return self.comm.bcast(make() if self.is_root else None, root=0)

    def allreduce_host(self, buf: np.ndarray) -> np.ndarray:
        """Sum ``buf`` (a contiguous NumPy array) over the ranks, in place."""
        with self.watch("the gradient all-reduce"):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf


def _saved_note(saved: str | None, *, root: bool) -> str:
    if saved is not None:
        return f"The last checkpoint, {saved}, is complete: resume from it (on any number of ranks)"
    if root:
        return "This run wrote no checkpoint: start it again (any earlier checkpoint is untouched)"
    return ("Any checkpoint rank 0 wrote is complete: resume from the run's latest.npz if it "
            "has one, else start the run again")  # fmt: skip


def _canonical(fingerprint: Mapping[str, Any]) -> dict[str, str]:
    """Each entry as JSON text (sorted keys): compared exactly, shown in messages."""
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in sorted(fingerprint.items())}


def _first_difference(prints: list[dict[str, str]]) -> str | None:
    """A one-line account of the first option that differs between rank 0 and another."""
    for rank, fp in enumerate(prints[1:], start=1):
        if fp == prints[0]:
            continue
        for key in sorted(set(fp) | set(prints[0])):
            a, b = prints[0].get(key), fp.get(key)
            if a != b:
                detail = _differing_field(a, b, rank)
                return (
                    f"the ranks were started with different options: {key}{detail} "
                    f"(start every rank with the same command and files)"
                )
    return None


def _differing_field(a: str | None, b: str | None, rank: int) -> str:
    """``.config.lr: rank 0 has X, rank 1 has Y``: the first leaf where two JSON texts
    differ, and its two values."""
    da, db = json.loads(a or "null"), json.loads(b or "null")
    path = ""
    while isinstance(da, dict) and isinstance(db, dict):
        field = next(f for f in sorted(set(da) | set(db)) if da.get(f) != db.get(f))
        path, da, db = f"{path}.{field}", da.get(field), db.get(field)
    return f"{path}: rank 0 has {da!r}, rank {rank} {db!r}"


class _Watchdog:
    """A daemon thread that aborts the job when a watched block (a collective, or a
    device read that waits on one) lasts longer than ``timeout`` seconds."""

    def __init__(self, comm: Communicator, timeout: float) -> None:
        self.comm, self.timeout = comm, float(timeout)
        self._what: str = ""
        self._since: float | None = None
        self._thread = threading.Thread(target=self._run, name="bptt-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def watch(self, what: str) -> Iterator[None]:
        outer = self._since
        if outer is None:
            self._what, self._since = what, time.monotonic()
        try:
            yield
        finally:
            if outer is None:
                self._since = None

    def _run(self) -> None:
        poll = min(1.0, self.timeout / 10)
        while True:
            time.sleep(poll)
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout:
                print(
                    f"bptt: {self.comm.who}: waited {self.timeout:g} s for the other ranks in "
                    f"{self._what}: a rank has stopped, hangs or was cut off; ending every "
                    f"rank (MPI_Abort). {self.comm.saved_note()}",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
                self.comm.abort(1)
                return


@contextlib.contextmanager
def abort_on_error(comm: Local | Communicator, *, prefix: str = "bptt") -> Iterator[None]:
    """Run a block of a data-parallel job; if it raises on this rank, print the error
    (a traceback for an unexpected one) and end every rank with ``MPI_Abort``, so that
    no other rank waits in a collective forever. One process: the error propagates."""
    try:
        yield
    except BaseException as e:
        if comm.size == 1 or (isinstance(e, SystemExit) and e.code in (0, None)):
            raise
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
        if isinstance(e, KeyboardInterrupt):
            code = 130
        elif not isinstance(e, (SystemExit, ValueError, OSError)):
            traceback.print_exc()
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        print(f"{prefix}: {comm.who}: {what}; ending every rank (MPI_Abort)",
              file=sys.stderr, flush=True)  # fmt: skip
        comm.abort(code)
        raise
