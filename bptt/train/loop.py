"""The body of :meth:`bptt.train.Trainer.run`: the step loop and what happens every
``log_every`` and ``eval_every`` steps. The only device reads: the tally at each
log, the finiteness of the parameters and the validation loss at each evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api.checks import check_call, check_values
from .rundir import BEST, LATEST
from .step import Tally

__all__ = ["NonFiniteError", "Reporter", "TrainResult", "run_loop"]

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

    def on_note(self, text: str) -> None:
        """Before the first step: what claiming the run directory did (a best carried
        over, a run replaced)."""


def _check_first_chunk(trainer: Any) -> None:
    """The value checks, once, where the run's data and parameters enter: one sync."""
    params, hidden = trainer.params, trainer.model.unpack_state(trainer.hidden)
    x, y = trainer.feed.chunk(trainer.state.chunk)
    xp, dims = check_call(trainer.model, params, x, targets=y, h0=hidden, need_targets=True)
    check_values(params, x, targets=y, h0=hidden, dims=dims, xp=xp)


def run_loop(trainer: Any, steps: int | None, minutes: float | None, reporter: Any,
             should_stop: Callable[[], bool] | None) -> Any:  # fmt: skip
    """Train until a stop condition; returns the TrainResult."""
    c, xp = trainer.config, trainer.backend.xp
    tally, logged_step, t_log = _new_tally(trainer), trainer.step, time.perf_counter()
    deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
    reason, last_val = "steps", None
    _check_first_chunk(trainer)
    while True:
        if steps is not None and trainer.step >= steps:
            break
        timed_out = deadline is not None and time.monotonic() >= deadline
        stopped = should_stop is not None and should_stop()
        timed_out, stopped = trainer.comm.agree_stop(timed_out, stopped)  # ranks: a step later
        if timed_out:
            reason = "time"
            break
        if stopped:
            reason = "interrupted"
            break
        loss, norm = trainer.advance()
        tally = tally.add(loss, norm, xp)
        reporter.on_step(trainer.step)
        at_eval = trainer.step % c.eval_every == 0
        if trainer.step % c.log_every == 0 or at_eval:
            _log(trainer, tally, logged_step, t_log, reporter, NonFiniteError)
            tally, logged_step, t_log = _new_tally(trainer), trainer.step, time.perf_counter()
        if at_eval:
            last_val = trainer.validate()
            stop = _after_eval(trainer, last_val, reporter, NonFiniteError)
            t_log = time.perf_counter()  # evaluation time is not training time
            if stop:
                reason = "early_stop"
                break
    trainer.comm.end_votes()
    if trainer.step > logged_step:
        _log(trainer, tally, logged_step, t_log, reporter, NonFiniteError)
    history = trainer.history
    if not history["val_step"] or history["val_step"][-1] != trainer.step:
        last_val = trainer.validate()
        _after_eval(trainer, last_val, reporter, NonFiniteError)
    elif last_val is None:
        last_val = history["val_bpc"][-1]
    return _result(trainer, reason, last_val)


def _log(trainer: Any, tally: Any, since: int, t0: float, reporter: Any, error: type) -> None:
    """The one host read per log interval: mean loss and the non-finite record."""
    xp, be = trainer.backend.xp, trainer.backend
    with trainer.comm.watch("reading the loss"):  # ranks: a read that waits on the all-reduce
        total, _, finite = be.to_numpy(xp.stack([tally.loss_sum, tally.running,
                                                 tally.finite_steps]))  # fmt: skip
    steps = trainer.step - since
    if finite < steps:
        first_bad = since + int(finite) + 1
        trainer.failed_step = first_bad
        raise error(_diverged(trainer, first_bad, "loss or gradient"), first_bad)
    trainer.comm.check_same(trainer.state.carry.params, trainer.step, be)  # ranks: one model
    bpc = float(total) / steps / LN2
    elapsed = max(time.perf_counter() - t0, 1e-9)
    chars_per_s = steps * trainer.config.batch * trainer.config.seq_len / elapsed
    trainer.history["train_step"].append(float(trainer.step))
    trainer.history["train_bpc"].append(bpc)
    reporter.on_log(trainer.step, bpc, chars_per_s)


def _params_finite(trainer: Any) -> bool:
    xp, be = trainer.backend.xp, trainer.backend
    return bool(be.to_numpy(xp.all(xp.isfinite(trainer.state.carry.params))))  # (N,): one read


def _after_eval(trainer: Any, val_bpc: float, reporter: Any, error: type) -> bool:
    """Record, report, checkpoint; True when early stopping says stop. The parameters'
    finiteness is read once here, before sampling and saving."""
    step = trainer.step
    if not _params_finite(trainer):  # the last update overflowed: stop before sampling
        trainer.failed_step = step
        raise error(_diverged(trainer, step, "parameters"), step)
    if not math.isfinite(val_bpc):  # finite but diverged parameters: never "best"
        trainer.failed_step = step
        raise error(_diverged(trainer, step, "validation loss"), step)
    trainer.history["val_step"].append(float(step))
    trainer.history["val_bpc"].append(val_bpc)
    best = trainer.best
    is_best = best["best_val"] is None or val_bpc < best["best_val"]
    if is_best:
        best.update(best_val=val_bpc, best_step=step, evals_since=0)
    else:
        best["evals_since"] += 1
    reporter.on_eval(step, val_bpc, is_best, trainer.sample_text())
    if is_best:  # best.npz first: latest.npz never records a best that best.npz lacks
        trainer.save(BEST)
    trainer.save(LATEST)
    patience = trainer.config.patience
    return patience is not None and best["evals_since"] >= patience


def _diverged(trainer: Any, step: int, what: str) -> str:
    """The one-line NonFiniteError message: the step, the checkpoint kept, what to do."""
    stopped = f"training stopped: the {what} became NaN or infinite at step {step}"
    lower = "a lower learning rate (lr=...) or a smaller clip (clip=...)"
    if LATEST in trainer.written:  # named only if this run wrote it
        latest = trainer.checkpoint_dir / LATEST
        where = f"the last good checkpoint, {latest} (step {trainer.written[LATEST]}), is untouched"
    elif trainer.resumed_at is not None:
        where = (f"this run wrote no checkpoint; the one it resumed from (step "
                 f"{trainer.resumed_at}) is untouched")  # fmt: skip
    else:  # nothing to resume from: a new run is the way on
        return f"{stopped}; no checkpoint was written. Start the run again with {lower}."
    return f"{stopped}; {where}. Resume with {lower}."


def _result(trainer: Any, reason: str, last_val: float | None) -> TrainResult:
    d, best = trainer.checkpoint_dir, trainer.best
    return TrainResult(
        trainer.step, reason, last_val, best["best_val"], best["best_step"],
        None if d is None else d / LATEST,
        None if d is None or best["best_step"] is None else d / BEST,
    )  # fmt: skip


def _new_tally(trainer: Any) -> Tally:
    be = trainer.backend
    return Tally.zero(be.xp, getattr(be.xp, trainer.config.dtype), be.device)
