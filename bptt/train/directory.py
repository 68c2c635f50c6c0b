"""Which directory a run writes, and whether it may: the run-directory policy.

:func:`claim` is what :meth:`bptt.train.Trainer.claim_directory` (and so ``Trainer.run``
and ``bptt train``) does before the first step:

- **where**: ``checkpoint_dir`` when given; else a resumed run's ``latest.npz``
  continues in its own directory and anything else (a new run, ``best.npz``, a copy)
  goes to a new ``checkpoints/<date>-<time>`` (:func:`new_run_directory`);
- **lock** it (:class:`bptt.train.rundir.RunLock`): one run at a time writes it;
- **refuse** a directory that holds another run (:func:`held_run`) unless
  ``overwrite=True``, and a resume that would replace its own run's later steps;
- **prove** the room for two checkpoints (:func:`bptt.train.rundir.check_writable`);
- **agree** ``latest.npz`` and ``best.npz``: in place, the best is what ``best.npz``
  holds (:func:`reconcile_best`); elsewhere, the best is copied along (:func:`carry_best`).

On failure the lock goes, and so does a directory this run made and left empty.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .checkpoint import peek_meta, save_checkpoint
from .loop import NonFiniteError
from .rundir import BEST, LATEST, LOCK_NAME, CheckpointError, check_writable, directory_error

__all__ = [
    "carry_best",
    "checkpoint_bytes",
    "choose_directory",
    "claim",
    "held",
    "held_run",
    "new_run_directory",
    "reconcile_best",
    "write",
]


def same_directory(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def choose_directory(checkpoint_dir: str | os.PathLike | None, resumed: Path | None, step: int,
                     *, overwrite: bool = False) -> tuple[Path, bool, bool]:  # fmt: skip
    """(where the run writes, whether it continues the resumed run there, whether the
    directory was made here). A run's latest.npz continues in its directory; any other
    checkpoint (best.npz, a copy) in a new one, or in ``checkpoint_dir``."""
    if checkpoint_dir is None:
        if resumed is not None and resumed.name == LATEST:
            return resumed.parent, True, False
        return new_run_directory(), False, True
    target = Path(checkpoint_dir)
    if resumed is None:
        return target, False, False
    same = target.exists() and same_directory(target, resumed.parent)
    if same and resumed.name == LATEST:
        return target, True, False
    if same and not overwrite:
        raise ValueError(
            f"resume={resumed}: continuing it in {resumed.parent} would replace that "
            f"run's latest.npz, and with it the steps after step {step}: leave out "
            "checkpoint_dir=... to continue in a new directory, or set overwrite=True"
        )
    return target, False, False


def claim(trainer: Any, checkpoint_dir: str | os.PathLike | None = None, *,
          overwrite: bool = False) -> list[str]:  # fmt: skip
    """Choose, lock and check ``trainer``'s run directory (see the module); set
    ``trainer.checkpoint_dir``. Returns notes on what was done (a best carried over, a
    run replaced)."""
    resumed = trainer.resumed_from
    directory, in_place, made = choose_directory(checkpoint_dir, resumed, trainer.step,
                                                 overwrite=overwrite)  # fmt: skip
    trainer.checkpoint_dir = directory
    trainer.lock_directory()
    try:
        return _settle(trainer, directory, in_place, overwrite=overwrite)
    except BaseException:
        trainer.unlock_directory()
        if not any(p.name != LOCK_NAME for p in directory.iterdir()):  # nothing of a run
            (directory / LOCK_NAME).unlink(missing_ok=True)
            if made:
                directory.rmdir()
        raise


def _settle(trainer: Any, directory: Path, in_place: bool, *, overwrite: bool) -> list[str]:
    resumed = trainer.resumed_from
    held = None if in_place else held_run(directory)
    if held is not None and not overwrite:
        raise ValueError(
            f"checkpoint_dir={directory}: it already holds a run ({held}); continue "
            f"that run (resume={directory}), or train in a new directory (another "
            "checkpoint_dir=..., or none for a new checkpoints/<date-time>); overwrite=True "
            "replaces it"
        )
    check_writable(directory, nbytes=2 * trainer.checkpoint_bytes())  # at start
    notes = []
    if held is not None:  # overwrite: the old run's files go, after every check passed
        keep = resumed if resumed is not None and resumed.name == BEST else None
        for name in (LATEST, BEST):
            if keep is None or not same_directory(directory / name, keep):
                (directory / name).unlink(missing_ok=True)
        notes.append(f"replaced the run in {directory} ({held}): overwrite=True")
    if resumed is not None:
        best = trainer.state.best
        note = (reconcile_best(best, directory) if in_place or held is not None
                else carry_best(best, resumed, trainer.step, directory))  # fmt: skip
        if not in_place:
            notes.append(f"continuing {resumed} (step {trainer.step}) in {directory}; "
                         f"{resumed.parent} is left as it is")  # fmt: skip
        notes += [note] if note else []
    return notes


def checkpoint_bytes(carry: Any, dtype: str) -> int:
    """About the size of one checkpoint file of a run's ``carry``: parameters, optimizer
    state, hidden state, and room for the history and metadata."""
    from ..optim import state_arrays

    itemsize = 8 if dtype == "float64" else 4
    arrays = [carry.params, carry.hidden, *state_arrays(carry.opt_state).values()]
    return itemsize * sum(math.prod(a.shape) for a in arrays) + 65536


def write(trainer: Any, name: str) -> Path | None:
    """Write ``trainer``'s checkpoint ``name`` into its directory (None without one); on
    several ranks a gather, rank 0 alone writing; a CheckpointError names a failed write
    and leaves the previous file as it was."""
    if trainer.checkpoint_dir is None:
        return None
    if trainer.failed_step is not None:
        raise NonFiniteError(f"step {trainer.step}: training diverged at step "
                             f"{trainer.failed_step}; no checkpoint written",
                             trainer.failed_step)  # fmt: skip
    target = trainer.checkpoint_dir / name
    ckpt = trainer.checkpoint()  # on several ranks, a gather; rank 0 alone writes
    with trainer.comm.startup("write a checkpoint", CheckpointError, save=(name, trainer.step)):
        try:
            saved = None if ckpt is None else save_checkpoint(target, ckpt)
            if saved is not None and name == LATEST:  # rank 0 knows at once (watchdog)
                trainer.comm.saved = f"{target} (step {trainer.step})"
        except OSError as e:  # e.g. the disk filled up during the run
            kept = "is unchanged" if target.exists() else "was never written"
            raise CheckpointError(
                f"checkpoint: cannot write {str(target)!r} at step {trainer.step}: "
                f"{e.strerror or e}; the previous {name} {kept}"
            ) from None
    trainer.written[name] = trainer.step
    if name == LATEST:  # named in the ranks' messages (watchdog, divergence)
        trainer.comm.saved = f"{target} (step {trainer.step})"
    return target if saved is None else saved


@contextlib.contextmanager
def held(trainer: Any, note: Callable[[str], None], **agreed: Any) -> Iterator[None]:
    """The run directory held for one :meth:`Trainer.run`: claimed (:func:`claim`) the
    first time, locked and checked for room after; released at the end, unless the
    caller took it (``lock_directory``, ``claim_directory``) and so releases it."""
    root = trainer.comm.is_root  # on several ranks, rank 0 alone locks and writes
    locked = trainer.lock is None and trainer.checkpoint_dir is not None and root
    try:
        with trainer.comm.startup(step=trainer.step, **agreed):
            if locked and not trainer.claimed:  # the run-directory policy, as bptt train's
                for text in trainer.claim_directory(trainer.checkpoint_dir):
                    note(text)
            elif locked:  # claimed before: this run's own directory
                trainer.lock_directory()
                check_writable(trainer.checkpoint_dir, nbytes=2 * trainer.checkpoint_bytes())
        yield
    finally:
        if locked:
            trainer.unlock_directory()


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
