"""A run directory: one run at a time writes it, and a new run never takes another's.

- :class:`RunLock`: an exclusive lock on the directory for the whole run
  (``flock`` on ``DIR/.lock``, POSIX), so that two runs cannot write one
  directory at once. The kernel drops the lock when its process ends, however it
  ends (SIGKILL, power loss), so a lock left by a dead process is never in the
  way. The file keeps the holder's process id, host and start time for the
  message a second run gets. Where ``flock`` is missing or refused (Windows,
  some network filesystems), the lock is the file itself, created exclusively,
  and a lock whose process is gone (same host) is taken over.
- :func:`held_run`: what a directory holds (``latest.npz``, ``best.npz``, with
  their steps), so that a new run refuses a directory that holds one.
- :func:`new_run_directory`: a fresh ``checkpoints/<date>-<time>`` directory,
  created atomically, unique even for two runs started in the same second.
- :func:`reconcile_best`: on resuming a run in place, the best record is what
  ``best.npz`` holds (it is written before ``latest.npz``, so after a failure
  between the two it may be ahead).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .checkpoint import BEST, LATEST, CheckpointError, directory_error, peek_meta, process_alive

__all__ = ["LOCK_NAME", "RunLock", "carry_best", "held_run", "new_run_directory", "reconcile_best"]

LOCK_NAME = ".lock"
# A lock file without a holder (its writer died between creating and writing it, or a
# flock-era file) older than this is stale; a live writer fills it within microseconds.
STALE_EMPTY_SECONDS = 60.0

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """The exclusive lock of one run directory; :meth:`acquire`, :meth:`release` (also
    as a context manager). Raises :class:`CheckpointError` when another live run holds it."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None
        self._exclusive_file = False

    @property
    def held(self) -> bool:
        return self._fd is not None or self._exclusive_file

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _info(self) -> bytes:
        return json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        ).encode()

    def _busy(self, holder: dict[str, Any]) -> CheckpointError:
        who = f"process {holder.get('pid', '?')}"
        if holder.get("host") not in (None, socket.gethostname()):
            who += f" on {holder['host']}"
        if holder.get("started"):
            who += f", started {holder['started']}"
        return CheckpointError(
            f"checkpoint-dir: {str(self.directory)!r} is in use by another run ({who}); "
            "two runs cannot write one directory: wait for it to end, or choose another "
            "--checkpoint-dir"
        )

    def _holder(self) -> dict[str, Any]:
        try:
            found = json.loads(self.path.read_bytes() or b"{}")
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def acquire(self) -> RunLock:
        """Take the lock (creating the directory); CheckpointError if a live run has it."""
        if self.held:
            return self
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if fcntl is None:
                return self._acquire_exclusive_file()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CheckpointError(directory_error("write to", self.directory, e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy(self._holder()) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise CheckpointError(directory_error("lock", self.path, e)) from None
            return self._acquire_exclusive_file(fresh=True)  # a filesystem without flock
        os.ftruncate(fd, 0)
        os.write(fd, self._info())
        self._fd = fd
        return self

    def _acquire_exclusive_file(self, *, fresh: bool = False) -> RunLock:
        """Without flock: the lock file itself, created exclusively; taken over when the
        process it names is gone (on this host). ``fresh``: an empty file was just made by
        the flock attempt (a filesystem that refused flock), so an empty one is no holder."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                same_host = holder.get("host") in (None, socket.gethostname())
                pid = holder.get("pid")
                dead = isinstance(pid, int) and same_host and not process_alive(pid)
                if dead or (not holder and (fresh or self._age() > STALE_EMPTY_SECONDS)):
                    self.path.unlink(missing_ok=True)  # a stale lock: its process is gone
                    continue
                raise self._busy(holder) from None
            except OSError as e:
                raise CheckpointError(directory_error("lock", self.path, e)) from None
            with os.fdopen(fd, "wb") as f:
                f.write(self._info())
            self._exclusive_file = True
            return self
        raise self._busy(self._holder())

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0

    def release(self) -> None:
        """Let the lock go (the file stays: removing it could let two runs lock two files)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        if self._exclusive_file:
            self._exclusive_file = False
            self.path.unlink(missing_ok=True)


def held_run(directory: str | os.PathLike) -> str | None:
    """``"latest.npz at step 4000, best.npz at step 2600"`` if ``directory`` holds a run's
    checkpoints, else None."""
    d = Path(directory)
    found = []
    for name in (LATEST, BEST):
        if (d / name).exists():
            meta = peek_meta(d / name)
            step = meta.get("step") if meta else None
            found.append(f"{name} at step {step}" if isinstance(step, int) else name)
    return ", ".join(found) or None


def new_run_directory(root: str | os.PathLike = "checkpoints") -> Path:
    """A new, empty ``root/<YYYYmmdd-HHMMSS>`` directory (``-2``, ``-3``, ... when that
    second's name is taken): ``mkdir`` is atomic, so two runs never get the same one."""
    base = Path(root) / time.strftime("%Y%m%d-%H%M%S")
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(directory_error("write to", base.parent, e)) from None
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise CheckpointError(directory_error("write to", candidate, e)) from None
        return candidate
    raise CheckpointError(f"checkpoint-dir: no free name for a new run in {str(base.parent)!r}")


def reconcile_best(best: dict[str, Any], directory: str | os.PathLike) -> str | None:
    """Make ``best`` (a run's best record, resumed from ``directory``'s latest.npz) say
    what ``directory``'s best.npz holds; a note on what changed, or None.

    best.npz is written before latest.npz, so a run stopped between the two writes
    (a full disk, a kill) leaves a best.npz that latest.npz does not record yet:
    the file on disk is what was saved, so its record wins. Without a best.npz
    (deleted) the best restarts, so that the next evaluation writes one.
    """
    path = Path(directory) / BEST
    if best.get("best_step") is None and not path.exists():
        return None
    if not path.exists():
        old = best.get("best_step")
        best.update(best_val=None, best_step=None, evals_since=0)
        return f"{path} is missing (latest.npz recorded a best at step {old}): the best restarts"
    meta = peek_meta(path)
    stored = meta.get("best") if meta else None
    if not isinstance(stored, dict) or stored.get("best_step") is None:
        raise CheckpointError(f"checkpoint: {str(path)!r}: meta.best: no best record")
    if _same_best(stored, best):
        return None
    note = (
        f"{path} holds the best of step {stored['best_step']}, which latest.npz did not "
        f"record (it recorded step {best.get('best_step')}): the best is that of best.npz"
    )
    best.update(best_val=stored["best_val"], best_step=stored["best_step"], evals_since=0)
    return note


def _same_best(record: Any, best: dict[str, Any]) -> bool:
    return isinstance(record, dict) and all(
        record.get(k) == best.get(k) for k in ("best_step", "best_val")
    )


def carry_best(best: dict[str, Any], resumed: Path, step: int, directory: Path) -> str | None:
    """For a run resumed from ``resumed`` (its checkpoint at ``step``) into another
    ``directory``: copy the best.npz that ``best`` records there, so that the new
    directory's latest.npz and best.npz agree; a note on what was done, or None.

    The best checkpoint is ``resumed`` itself when it records itself as the best
    (a best.npz), else the best.npz beside it when that holds the recorded best;
    without one the best restarts (the first evaluation writes best.npz).
    """
    if best.get("best_step") is None:
        return None
    target = directory / BEST
    candidates = [resumed] if best["best_step"] == step else []
    candidates.append(resumed.parent / BEST)
    for source in candidates:
        meta = peek_meta(source) if source.exists() else None
        record = meta.get("best") if meta else None
        if not _same_best(record, best):
            continue
        if target.exists() and os.path.samefile(source, target):
            return None
        _copy_atomically(source, target)
        return f"{target}: the best so far (step {best['best_step']}), copied from {source}"
    old = best["best_step"]
    best.update(best_val=None, best_step=None, evals_since=0)
    return (
        f"the best restarts in {directory} (the best of step {old} is not beside "
        f"{resumed}, so it cannot be carried over)"
    )


def _copy_atomically(source: Path, target: Path) -> None:
    """``source`` to ``target`` through a temporary file (fsynced, renamed)."""
    import shutil
    import tempfile

    fd, tmp = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(directory_error("write", target, e)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
