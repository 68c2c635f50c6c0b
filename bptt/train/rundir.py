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
- :func:`check_writable`: the directory takes the checkpoints' bytes before any
  training, and temporary files of killed writers are removed
  (:func:`remove_stale_temporaries`: a temporary carries its writer's process id,
  ``.latest.npz.<pid>.<random>.tmp``, and is removed once no live process has that id).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "BEST",
    "LATEST",
    "LOCK_NAME",
    "CheckpointError",
    "RunLock",
    "carry_best",
    "check_writable",
    "directory_error",
    "held_run",
    "new_run_directory",
    "process_alive",
    "reconcile_best",
    "remove_stale_temporaries",
]

LATEST, BEST = "latest.npz", "best.npz"

LOCK_NAME = ".lock"
# A lock file without a holder (its writer died between creating and writing it, or a
# flock-era file) older than this is stale; a live writer fills it within microseconds.
STALE_EMPTY_SECONDS = 60.0

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class CheckpointError(ValueError):
    """A checkpoint or run directory that is missing, truncated, corrupt, too new, of another
    model size, in use or not writable."""


def directory_error(action: str, path: Path, e: OSError) -> str:
    """``checkpoint-dir: cannot write to ...`` saying what the system's error means here:
    a full disk, a path through a file, a directory that takes no files (/proc)."""
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the disk is full or over quota: free space or use another --checkpoint-dir)"
    elif e.errno == errno.ENOTDIR:
        blocker = next((a for a in (path, *path.parents) if a.exists() and not a.is_dir()), None)
        if blocker is not None:
            reason = f"{str(blocker)!r} is not a directory"
    elif e.errno == errno.ENOENT and path.is_dir():
        reason = ("the directory exists but takes no new files (a virtual filesystem such as "
                  f"/proc or /sys?); the system said: {reason}")  # fmt: skip
    elif e.errno in (errno.EROFS,):
        reason += " (a read-only filesystem)"
    return f"checkpoint-dir: cannot {action} {str(path)!r}: {reason}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (POSIX; elsewhere True: it cannot be tested safely)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours (EPERM)
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary checkpoint and probe files whose writing process is gone.

    Only names this module writes (``.<name>.npz.<pid>.<random>.tmp``,
    ``.probe.<pid>.<random>.tmp``) are touched, and only on POSIX, where a
    process id can be tested without side effects. Returns what was removed.
    """
    if os.name != "posix":
        return []
    removed = []
    for f in Path(directory).glob(".*.tmp"):
        parts = f.name.split(".")
        ours = f.name.startswith(".probe.") or ".npz." in f.name
        if ours and len(parts) >= 5 and parts[-3].isdigit() and not process_alive(int(parts[-3])):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def check_writable(directory: str | os.PathLike, *, nbytes: int = 4096) -> Path:
    """Create ``directory`` and prove ``nbytes`` can be written there, before any training.

    Writes and fsyncs a probe file of ``nbytes`` (pass what the checkpoints will
    need, so that a nearly full disk is found now, not at the first save), then
    deletes it and any temporary files left by killed runs
    (:func:`remove_stale_temporaries`). Raises :class:`CheckpointError`.
    """
    d = Path(directory)
    block = b"\0" * min(nbytes, 1 << 20)
    try:
        d.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(d)
        prefix = f".probe.{os.getpid()}."
        with tempfile.NamedTemporaryFile(dir=d, prefix=prefix, suffix=".tmp") as f:
            left = max(nbytes, 1)
            while left > 0:
                left -= f.write(block[:left])
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise CheckpointError(directory_error("write to", d, e)) from None
    return d


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
    from .checkpoint import peek_meta  # here: that module imports this one

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
    from .checkpoint import peek_meta

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
    from .checkpoint import peek_meta

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
