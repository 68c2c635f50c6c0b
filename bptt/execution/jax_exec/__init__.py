"""How the recurrences run on JAX: one ``jax.lax.scan`` per recurrence under a trace.

The math writes each recurrence as a step body and takes its loop from outside
(:mod:`bptt.math.scan`). Here the loop is ``jax.lax.scan`` with the same signature as
:func:`bptt.math.scan.python_scan`, so the program XLA compiles holds one loop body
whatever T is: the compile time of a jitted step does not grow with T, where the
Python loop unrolls T copies of the body into it.

Only under a trace (``jax.jit``, ``jax.make_jaxpr``, ...): called eagerly, on concrete
arrays, JAX runs each operation as it comes, and a ``lax.scan`` would trace and
compile its body anew at every call (a fresh closure is a new cache key), so the
loop stays in Python there (the same operations, the same bits).

:mod:`.recurrences` is :mod:`bptt.math.model`'s two recurrences driven by this scan, the
``recurrences`` seam of :mod:`bptt.math.layers` and :mod:`bptt.math.step`;
:func:`bptt.execution.schedules.resolve` picks it on JAX unless ``schedule="unrolled"``.
``jax`` is imported inside the functions only (the package imports without it).
"""

from __future__ import annotations

from . import recurrences
from .loop import is_traced, jit, scan

__all__ = ["is_traced", "jit", "recurrences", "scan"]
