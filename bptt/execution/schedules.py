"""Choosing how a step is executed: the ``schedule=`` argument of :func:`bptt.loss_and_grad`.

``"single"`` is the pure step of :mod:`bptt.math.step`, one block of all T steps: it
runs on every array library. ``"overlap"`` and ``"split"`` arrange the same step
across threads and exist for NumPy only (:mod:`bptt.execution.numpy_exec`): asking for one
with another library raises. ``"auto"`` (the default) picks among the three on
NumPy from measured break-even points and ``"single"`` everywhere else. The
environment variable ``BPTT_SCHEDULE`` sets the default for calls that pass none.
A stack (several layers or two directions, :mod:`bptt.math.layers`) or a gated cell
runs ``"single"`` or ``"split"``: ``"overlap"`` interleaves one vanilla recurrence with
its products and is refused for them (``"auto"`` then splits the batch where it would
have overlapped, if the batch makes parts: :func:`bptt.execution.numpy_exec.policy.choose`).

The loop of each recurrence (:mod:`bptt.math.scan`) is the library's: on JAX ``"auto"``
and ``"single"`` run it as one ``jax.lax.scan`` under a trace (:mod:`bptt.execution.jax_exec`:
a jitted step whose program does not grow with T), which ``"scan"`` names
explicitly; ``"unrolled"`` is the Python loop, one copy of the step body per time
step in a traced program (JAX) and the single schedule elsewhere. ``"scan"`` on a
library without one raises.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

from ..backends import namespace_library
from ..math import model, step
from ..math import remat as remat_step
from . import jax_exec, numpy_exec

__all__ = [
    "ENV_VAR",
    "SCHEDULES",
    "execution",
    "forward_recurrences",
    "resolve",
    "resolve_name",
    "runner",
]

SCHEDULES = ("auto", "single", "overlap", "split", "scan", "unrolled")
ENV_VAR = "BPTT_SCHEDULE"


def resolve_name(schedule: str | None) -> str:
    """The schedule asked for: ``schedule``, else ``$BPTT_SCHEDULE``, else ``"auto"``."""
    name = schedule if schedule is not None else (os.environ.get(ENV_VAR) or "auto")
    if name not in SCHEDULES:
        where = "schedule" if schedule is not None else ENV_VAR
        raise ValueError(f"{where}: expected one of {list(SCHEDULES)}; got {name!r}")
    return name


def resolve(
    schedule: str | None, xp: Any, T: int, B: int, D: int, itemsize: int, *,
    single: bool = True,
) -> tuple[str, Callable[..., Any]]:  # fmt: skip
    """``(name, run)`` for a (T, B, D) step on namespace ``xp``: ``run`` takes the
    arguments of :func:`bptt.math.step.loss_and_grad`. ``single``: one layer, one
    direction (a stack cannot run ``"overlap"``)."""
    name = resolve_name(schedule)
    library = namespace_library(xp)
    _refuse_scan(name, library, schedule)
    if library != "numpy":
        if name in numpy_exec.SCHEDULES[1:]:
            raise ValueError(
                f"schedule: {name!r} arranges a step across NumPy threads and runs on NumPy "
                f"arrays only; these are {library} arrays: use 'single' "
                "or 'auto'"
            )
        if library == "jax" and name != "unrolled":
            return "scan", functools.partial(step.loss_and_grad, recurrences=jax_exec.recurrences)
        return name if name == "unrolled" else "single", step.loss_and_grad
    if name == "unrolled":  # NumPy's single schedule is its Python loop
        return name, numpy_exec.schedule("single", T, B, D, forced=True)
    if name == "overlap" and not single:
        raise ValueError(
            "schedule: 'overlap' interleaves the products of one recurrence with the next "
            "block of it and runs one vanilla (tanh or relu) layer of one direction only; "
            "this model is a stack or a gated cell: use 'single', 'split' or 'auto'"
        )
    forced = name != "auto"
    if not forced:
        name = numpy_exec.policy.choose(T, B, D, itemsize, single=single)
    return name, numpy_exec.schedule(name, T, B, D, forced=forced)


def runner(
    schedule: str | None, xp: Any, T: int, B: int, D: int, itemsize: int, *,
    single: bool = True, remat: Any = None,
) -> tuple[str, Callable[..., Any]]:  # fmt: skip
    """:func:`resolve`, or with ``remat`` (checked, :func:`bptt.math.remat.check`) the
    memory-bounded step of :mod:`bptt.math.remat` on the loops :func:`execution` picks, under
    its BLAS context: ``(name, run)``, ``run`` taking :func:`bptt.math.step.loss_and_grad`'s
    arguments."""
    if remat is None:
        return resolve(schedule, xp, T, B, D, itemsize, single=single)
    recurrences, blas = execution(xp, B, D, schedule)

    def run(*args: Any, **kwargs: Any) -> Any:
        with blas():
            return remat_step.loss_and_grad(*args, remat=remat, recurrences=recurrences,
                                            **kwargs)  # fmt: skip

    return "remat", run


def execution(
    xp: Any, B: int, D: int, schedule: str | None = None
) -> tuple[Any, Callable[[], Any]]:
    """``(recurrences, context)`` for a pass that is not a whole step (:func:`bptt.vjp`;
    :func:`bptt.forward` takes :func:`forward_recurrences`): NumPy's own recurrences
    (same bits, written into their results) under the BLAS thread limit the single
    schedule uses; on JAX the scanned ones (:mod:`bptt.execution.jax_exec`) unless ``schedule``
    is ``"unrolled"``; the pure ones elsewhere. ``schedule`` as :func:`resolve_name`
    reads it; only the loop matters here."""
    library = namespace_library(xp)
    _refuse_scan(resolve_name(schedule), library, schedule)
    if library == "jax":
        unrolled = resolve_name(schedule) == "unrolled"
        return (model if unrolled else jax_exec.recurrences), contextlib.nullcontext
    if library != "numpy":
        return model, contextlib.nullcontext
    return numpy_exec.recurrences, functools.partial(numpy_exec.blas_context, B, D)


def forward_recurrences(xp: Any, schedule: str | None = None) -> Any:
    """The recurrences of a forward pass alone (:func:`bptt.forward`): the scanned ones
    on JAX unless ``schedule`` is ``"unrolled"``, the pure ones of :mod:`bptt.math.model`
    elsewhere (on NumPy as before, with the BLAS threads the caller has)."""
    name, library = resolve_name(schedule), namespace_library(xp)
    _refuse_scan(name, library, schedule)
    return jax_exec.recurrences if library == "jax" and name != "unrolled" else model


def _refuse_scan(name: str, library: str, schedule: str | None) -> None:
    if name == "scan" and library != "jax":
        where = "schedule" if schedule is not None else ENV_VAR
        raise ValueError(
            f"{where}: 'scan' runs each recurrence as one jax.lax.scan and needs JAX "
            f"arrays; these are {library} arrays: use 'single', 'unrolled' or 'auto'"
        )
