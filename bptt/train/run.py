"""The body of :meth:`bptt.train.Trainer.run`: the step loop and what happens every
``log_every`` and ``eval_every`` steps. The only device reads: the tally at each
log, the finiteness of the parameters and the validation loss at each evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ..api.checks import check_call, check_values
from .checkpoint import BEST, LATEST

__all__ = ["run_loop"]

LN2 = math.log(2.0)


def _check_first_chunk(trainer: Any) -> None:
    """The value checks, once, where the run's data and parameters enter: one sync."""
    params, hidden = trainer.params, trainer.model.unpack_state(trainer.hidden)
    x, y = trainer.feed.chunk(trainer.state.chunk)
    xp, dims = check_call(trainer.model, params, x, targets=y, h0=hidden, need_targets=True)
    check_values(params, x, targets=y, h0=hidden, dims=dims, xp=xp)


def run_loop(trainer: Any, steps: int | None, minutes: float | None, reporter: Any,
             should_stop: Callable[[], bool] | None) -> Any:  # fmt: skip
    """Train until a stop condition; returns the TrainResult."""
    from .loop import NonFiniteError

    c, xp = trainer.config, trainer.backend.xp
    tally, logged_step, t_log = trainer.new_tally(), trainer.step, time.perf_counter()
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
            tally, logged_step, t_log = trainer.new_tally(), trainer.step, time.perf_counter()
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
    return trainer.result(reason, last_val)


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
        raise error(trainer.diverged(first_bad, "loss or gradient"), first_bad)
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
        raise error(trainer.diverged(step, "parameters"), step)
    if not math.isfinite(val_bpc):  # finite but diverged parameters: never "best"
        trainer.failed_step = step
        raise error(trainer.diverged(step, "validation loss"), step)
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
