"""The two recurrences of :mod:`bptt.math.model` driven by :func:`bptt.execution.jax_exec.scan`.

The ``recurrences`` seam of :mod:`bptt.math.layers` and :mod:`bptt.math.step` (as
:mod:`bptt.execution.numpy_exec.recurrences` is NumPy's): the same step bodies, the same
contract; under ``jax.jit`` each recurrence is one ``lax.scan`` (equal to the
unrolled loop to rounding: XLA may fuse the loop body differently), eagerly the
Python loop of :mod:`bptt.math.model` bit for bit.
"""

from __future__ import annotations

from typing import Any

from ...math import model
from ...math.scan import python_scan
from .loop import is_traced, scan

__all__ = ["barrier", "recurrence", "reverse_recurrence", "scan", "segment_scan"]


def recurrence(W: Any, xu: Any, s: Any, xp: Any, nonlinearity: str = "tanh") -> Any:
    """As :func:`bptt.math.model.recurrence`: s_0 .. s_n, (n+1, B, D), eqs. (19)-(20)."""
    return model.recurrence(W, xu, s, xp, nonlinearity, scan=scan)


def reverse_recurrence(
    W: Any, states: Any, dS: Any, dz: Any, xp: Any, nonlinearity: str = "tanh"
) -> Any:
    """As :func:`bptt.math.model.reverse_recurrence`: dz_n .. dz_1, (n, B, D), eq. (62)."""
    fused = is_traced((states, dS))  # a compiled loop: f' inside the step, no peel
    return model.reverse_recurrence(W, states, dS, dz, xp, nonlinearity, scan=scan, fused=fused)


def barrier(tree: Any) -> Any:
    """``jax.lax.optimization_barrier(tree)`` under a trace, ``tree`` itself eagerly.

    What :mod:`bptt.math.remat` hands a replay its start state through, together with the
    gradient coming from later steps: XLA can then neither merge the replay with the
    first pass's identical operations (common-subexpression elimination would undo the
    recomputation and keep every state alive) nor run it before the later segments'
    backward passes (as ``jax.checkpoint`` does with its residuals).
    """
    if not is_traced(tree):
        return tree
    import jax

    return jax.lax.optimization_barrier(tree)


def segment_scan(
    body: Any, carry: Any, xs: tuple[Any, ...], xp: Any, *, reverse: bool = False,
    witness: Any = (),
) -> tuple[Any, tuple[Any, ...]]:  # fmt: skip
    """The loop over segments of :mod:`bptt.math.remat_scan`: ``jax.lax.scan`` when anything
    of ``carry``, ``xs`` or ``witness`` (the parameters, which the body closes over) is
    traced, the Python loop otherwise; the contract of :func:`bptt.math.scan.python_scan`.
    Its presence here is what makes :func:`bptt.math.remat.run` take the scanned form."""
    if not is_traced((carry, xs, witness)):
        return python_scan(body, carry, xs, xp, reverse=reverse)
    import jax

    carry, ys = jax.lax.scan(body, carry, tuple(xs), reverse=reverse)
    return carry, tuple(ys)
