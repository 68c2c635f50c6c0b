"""The recurrent cells a layer can run, behind one interface: what :mod:`bptt.math.layers`
composes into stacks and two directions.

Pure math, like :mod:`bptt.math.model`. A cell of D units with G gates has the parameters
``U`` (G D, M), ``W`` (G D, D), ``b`` (G D,) or None, and its ``extra_biases`` (D,)
each; it provides

- ``recurrence(p, xu, s0, xp, executor) -> (H, aux, last)``: ``xu`` (T, B, G D) the
  hoisted input projection, ``s0`` the state before step 1 (None: zeros), ``H``
  (T+1, B, D) the hidden states h_0 .. h_T, ``aux`` what the backward pass needs
  besides, ``last`` the state after step T;
- ``reverse_recurrence(p, H, aux, dS, xp, executor, want_s0, d_last=None)`` ->
  ``(dXU, dHW, d_s0)``: dL/d(xu_t) and dL/d(h_{t-1} W^T) (T, B, G D) (the same array
  when the hidden projection enters as the input's does), and dL/ds_0 when
  ``want_s0``, shaped as the state (a pair for a state of two parts);
  ``d_last`` (optional, shaped as ``last``) is the gradient reaching the last state
  s_T from outside these T steps: what the steps after them sent back (their
  ``d_s0``), so that a sequence run in segments (:mod:`bptt.math.remat`) chains its
  backward passes; for LSTM the pair (dL/dh_T, dL/dc_T), dL/dc crossing the
  boundary. None means zero (the end of the sequence): the interface's first form,
  which :mod:`bptt.math.layers` still uses when nothing comes from outside, so a cell
  without the argument runs everything but segments;
- ``weight_grads(p, dXU, dHW, H, inputs, xp) -> dict``, ``input_grads(U, dXU, xp)``.

``executor`` is where the loops come from (:mod:`bptt.math.model`, NumPy's
:mod:`bptt.execution.numpy_exec.recurrences`, or another library's): its ``recurrence`` and
``reverse_recurrence`` run the vanilla cell, its ``scan`` (lax.scan's contract,
:mod:`bptt.math.scan`) any cell written as a step body, and a gated cell's own loops when it
has them by name (``gru_recurrence``, ..., NumPy's: the same bits, written in place).
"""

from __future__ import annotations

from typing import Any

from . import gru, lstm, model
from .scan import python_scan

__all__ = ["CELLS", "GATED", "GATED_MODULES", "VANILLA", "Gated", "Vanilla", "get_cell"]

VANILLA = model.NONLINEARITIES  # ("tanh", "relu"): the vanilla cell's f
GATED = ("gru", "lstm")


class Vanilla:
    """The Elman cell of eqs. (19)-(20), f = tanh or relu (eq. B17): one gate."""

    gates = 1
    state_parts = 1
    extra_biases: tuple[str, ...] = ()

    def __init__(self, nonlinearity: str) -> None:
        self.nonlinearity = nonlinearity

    def __repr__(self) -> str:
        return f"Vanilla({self.nonlinearity!r})"

    def recurrence(self, p: Any, xu: Any, s0: Any, xp: Any, executor: Any) -> tuple[Any, ...]:
        states = executor.recurrence(p["W"], xu, s0, xp, self.nonlinearity)  # (T+1, B, D)
        return states, (), states[-1, ...]

    def reverse_recurrence(
        self, p: Any, H: Any, aux: Any, dS: Any, xp: Any, executor: Any, want_s0: bool,
        d_last: Any = None,
    ) -> tuple[Any, Any, Any]:  # fmt: skip
        if d_last is not None:  # dL/ds_T from later steps joins dS_T, eq. (B25)
            dS = xp.concat([dS[:-1, ...], (dS[-1, ...] + d_last)[None, ...]], axis=0)
        dZ = executor.reverse_recurrence(p["W"], H, dS, None, xp, self.nonlinearity)  # eq. (B12)
        d_s0 = model.initial_state_grads(p["W"], dZ[0, ...]) if want_s0 else None  # eq. (B23)
        return dZ, dZ, d_s0

    def weight_grads(self, p: Any, dXU: Any, dHW: Any, H: Any, inputs: Any, xp: Any) -> dict:
        return model.weight_grads(p, dXU, H, inputs, xp)  # dW, db, dU, eq. (B13)

    def input_grads(self, U: Any, dXU: Any, xp: Any) -> Any:
        return model.input_grads(U, dXU, xp)  # eq. (B20)/(B22)


class Gated:
    """A gated cell written as step bodies (:mod:`bptt.math.gru`, :mod:`bptt.math.lstm`): its
    loops run on the executor's ``scan`` (the Python loop where it has none)."""

    def __init__(self, name: str, module: Any) -> None:
        self.name, self.module = name, module
        self.gates, self.state_parts = module.GATES, module.STATE_PARTS
        self.extra_biases: tuple[str, ...] = module.EXTRA_BIASES

    def __repr__(self) -> str:
        return f"Gated({self.name!r})"

    def recurrence(self, p: Any, xu: Any, s0: Any, xp: Any, executor: Any) -> tuple[Any, ...]:
        run = getattr(executor, f"{self.name}_recurrence", self.module.recurrence)
        return run(p, xu, s0, xp, scan=_scan(executor))  # (H, aux, last)

    def reverse_recurrence(
        self, p: Any, H: Any, aux: Any, dS: Any, xp: Any, executor: Any, want_s0: bool,
        d_last: Any = None,
    ) -> tuple[Any, Any, Any]:  # fmt: skip
        fast = getattr(executor, f"{self.name}_reverse_recurrence", None)
        if fast is not None and d_last is None:  # the executor's own loop (same bits)
            dXU, dHW, d_s0 = fast(p, H, aux, dS, xp)
        else:
            dXU, dHW, d_s0 = self.module.reverse_recurrence(
                p, H, aux, dS, xp, scan=_scan(executor), d_last=d_last
            )
        return dXU, dHW, (d_s0 if want_s0 else None)

    def weight_grads(self, p: Any, dXU: Any, dHW: Any, H: Any, inputs: Any, xp: Any) -> dict:
        return self.module.weight_grads(p, dXU, dHW, H, inputs, xp)

    def input_grads(self, U: Any, dXU: Any, xp: Any) -> Any:
        return self.module.input_grads(U, dXU, xp)


def _scan(executor: Any) -> Any:
    return getattr(executor, "scan", python_scan)


GATED_MODULES: dict[str, Any] = {"gru": gru, "lstm": lstm}
CELLS: dict[str, Any] = {name: Vanilla(name) for name in VANILLA}
CELLS.update({name: Gated(name, module) for name, module in GATED_MODULES.items()})


def get_cell(name: str) -> Any:
    """The cell called ``name`` (one of :data:`CELLS`)."""
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"cell: expected one of {list(CELLS)}; got {name!r}") from None
