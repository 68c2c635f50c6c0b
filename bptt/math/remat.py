"""Memory-bounded BPTT: store some states, recompute the rest in the backward pass.

``remat=`` of :func:`bptt.loss_and_grad`, :func:`bptt.vjp` and the training step:

- ``None``: store every state (plain BPTT);
- an integer k: store every k-th state (Chen et al. 2016), replay each segment of k
  steps from its stored state during the backward pass;
- ``"sqrt"``: k = ceil(sqrt(T));
- ``"budget:m"`` (or :class:`Budget`\\ (m)): hold at most m states' worth at once
  (stored states, plus :data:`REPLAY_SLOTS` per step of the segment being replayed:
  its state, U x + b, dS and dz), the replay order that minimises
  recomputation found by Gruslys et al. 2016's dynamic program (BPTT-HSM), see
  :func:`hsm_table` and docs/derivation.md, "Memory-bounded BPTT".

A plan is a static list of operations (:func:`plan`): ``("advance", a, b, chunk)``
runs steps a+1..b from the state held at a, in pieces of at most ``chunk`` steps,
and holds s_b; ``("leaf", a, b)`` replays steps a+1..b from s_a keeping everything
(:func:`bptt.math.layers.forward`), runs the head on them and their pullback
(:func:`bptt.math.layers.backward`) with the gradient that reached s_b from later
steps; ``("free", b)`` lets s_b go. Leaves run last segment first, so one
gradient ``d`` is carried from each leaf to the one before (for a state of two
parts, LSTM's, the pair: dL/dc crosses the boundary too).

The replay runs the operations of the first pass on the same inputs, masks and
state, so on NumPy the recomputed states, every dz_t and dL/dh0 are bit for bit
those of full BPTT; a parameter's gradient is a sum of one product per segment
instead of one product over all T steps, equal to rounding (float64: ~1e-15
relative). The plan depends on T and the setting only: no host read, no
value-dependent control flow, so it compiles under ``jax.jit`` (each recurrence a
``lax.scan`` of the scan seam); there a uniform k runs as two loops over segments
(:mod:`bptt.math.remat_scan`), whose liveness XLA keeps (an unrolled plan's it does
not). ``"budget:m"`` runs there as the uniform k that fits m with the fewest forward
steps (:func:`uniform_k`: one replay of each segment, T + n k steps, where the dynamic
program may replay less); a budget no uniform k fits (below about 2 sqrt(w T) states)
keeps the dynamic program's plan, unrolled. A bidirectional stack runs the plan per layer and
direction (:mod:`bptt.math.remat_layerwise`): a reverse cell's state depends on the whole
sequence, so the segments cannot cut across the stack.

Pure math: ``xp`` and :mod:`bptt.math.layers`, :mod:`bptt.math.heads`.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import layers, model
from .heads import HEADS, reduce

__all__ = [
    "Budget",
    "Plan",
    "check",
    "hsm_table",
    "loss_and_grad",
    "own_state",
    "parse",
    "plan",
    "pullback",
    "run",
    "scan_k",
    "uniform_cost",
    "uniform_k",
]

_INF = np.iinfo(np.int64).max // 4
# What a replayed step holds, in stored states: its state s_t, U x_t + b, dS_t and dz_t
# (tracemalloc at T = 1,000: ~4.4 states' bytes per replayed step, one per checkpoint).
REPLAY_SLOTS = 4


@dataclass(frozen=True)
class Budget:
    """At most ``states`` stored states' worth held at once (beyond h0; a replayed step
    counts :data:`REPLAY_SLOTS`)."""

    states: int


@dataclass(frozen=True)
class Plan:
    """A static schedule: ``ops`` in order, ``cost`` forward steps run (T without
    recomputation), ``peak`` the most memory held at once (beyond h0), in stored
    states, a replayed step counting :data:`REPLAY_SLOTS`."""

    ops: tuple[tuple[Any, ...], ...]
    cost: int
    peak: int


def parse(remat: Any) -> Any:
    """``remat`` checked: None, a positive int, ``"sqrt"`` or a :class:`Budget`
    (``"budget:m"`` read as ``Budget(m)``, an all-digit string as an int)."""
    if remat is None or remat == "sqrt" or isinstance(remat, Budget):
        if isinstance(remat, Budget) and not _whole(remat.states, 1):
            raise ValueError(f"remat: a budget is a positive number of states; got {remat!r}")
        return remat
    if isinstance(remat, str):
        text = remat.strip()
        if text.isdigit() and int(text) >= 1:
            return int(text)
        if text.startswith("budget:") and text[7:].isdigit() and int(text[7:]) >= 1:
            return Budget(int(text[7:]))
    elif _whole(remat, 1):
        return int(remat)
    raise ValueError(
        "remat: expected None, a positive integer k (store every k-th state), 'sqrt' or "
        f"'budget:m' (at most m states held); got {remat!r}"
    )


def check(remat: Any, directions: int) -> Any:
    """``remat`` parsed (:func:`parse`) for a model of ``directions`` (two are refused)."""
    del directions  # a bidirectional stack runs layer by layer (bptt.math.remat_layerwise)
    return parse(remat)


def _whole(value: Any, low: int) -> bool:
    return hasattr(value, "__index__") and not isinstance(value, bool) and int(value) >= low


@functools.cache
def hsm_table(T: int, m: int, w: int = REPLAY_SLOTS) -> tuple[np.ndarray, np.ndarray]:
    """Gruslys et al.'s dynamic program (BPTT-HSM) for t <= T steps and j <= m slots:
    ``(cost, split)`` (T+1, m+1) int64 arrays.

    cost[t, j]: the fewest forward steps that backpropagate t steps from a held start
    state with j slots free; split[t, j]: the first advance y (0: replay all t as one
    segment, which needs w t <= j slots: a replayed step holds w states' worth)::

        C(0, j) = 0,   C(t, 0) = inf (t > 0),   C(t, j) = t if w t <= j, else
        C(t, j) = min_{1 <= y < t}  y + C(t - y, j - 1) + C(y, j)

    (advance y steps and hold that state: one slot while the last t - y steps are
    done, then the first y with the slot back). O(T^2 m) on the host, once per
    (T, m).
    """
    cost = np.full((T + 1, m + 1), _INF, dtype=np.int64)
    split = np.zeros((T + 1, m + 1), dtype=np.int64)
    cost[0, :] = 0
    j = np.arange(1, m + 1)  # (m,)
    ys = np.arange(1, T + 1, dtype=np.int64)[:, None]  # (T, 1)
    for t in range(1, T + 1):  # every budget at once: one (t-1, m) array per t, views
        fits = j >= w * t  # one segment of t steps fits in j slots
        if t == 1:
            cost[1, 1:] = np.where(fits, 1, _INF)
            continue
        total = cost[t - 1 : 0 : -1, :m] + cost[1:t, 1:]  # C(t-y, j-1) + C(y, j), eq. (B26)
        total += ys[: t - 1]  # + y: the advance
        best = np.argmin(total, axis=0)  # (m,)
        found = np.minimum(total[best, j - 1], _INF)
        cost[t, 1:] = np.where(fits, t, found)
        split[t, 1:] = np.where(fits, 0, best + 1)
    return cost, split


def _k_of(remat: Any, T: int) -> int:
    return math.isqrt(T - 1) + 1 if remat == "sqrt" else min(int(remat), T)  # ceil(sqrt T)


def uniform_cost(T: int, k: int) -> tuple[int, int]:
    """``(cost, peak)`` of :func:`plan` (T, k), in closed form: n = ceil(T / k) - 1
    stored states, each segment replayed once (cost T + n k, eq. B27); the peak is
    that of the advances (n - 1 held and k steps in flight) or of the tail's replay
    (n held, the T - n k steps left)."""
    n = (T - 1) // k
    return T + n * k, max(n - 1 + REPLAY_SLOTS * min(k, T), n + REPLAY_SLOTS * (T - n * k))


@functools.cache
def uniform_k(T: int, states: int) -> int | None:
    """The k of every k-th state whose plan fits ``states`` (:class:`Budget`) with the
    fewest forward steps (ties: the lower peak), or None when no k fits: the uniform
    plan a budget runs as two loops under a trace (:mod:`bptt.math.remat_scan`)."""
    fits = [(cost, peak, k) for k in range(1, min(T, states // REPLAY_SLOTS) + 1)
            for cost, peak in [uniform_cost(T, k)] if peak <= states]  # fmt: skip
    return min(fits)[2] if fits else None


def scan_k(T: int, remat: Any) -> int | None:
    """The k of the uniform plan ``remat`` (:func:`parse`d) runs as loops over segments
    where the recurrences have them: k, ceil(sqrt(T)), or a budget's :func:`uniform_k`
    (None: no uniform k fits it, the dynamic program's plan runs instead)."""
    return uniform_k(T, remat.states) if isinstance(remat, Budget) else _k_of(remat, T)


@functools.cache
def plan(T: int, remat: Any) -> Plan:
    """The static plan for T steps under ``remat`` (:func:`parse`d, not None)."""
    remat, w = parse(remat), REPLAY_SLOTS
    table, m = None, 0
    if isinstance(remat, Budget):
        need = w + (T > 1)  # one replayed step, and a stored state before it
        if remat.states < need:
            raise ValueError(
                f"remat: a budget of {remat.states} state(s) cannot backpropagate {T} steps "
                f"(a replayed step holds {w} states' worth, and one is stored before it): "
                f"give {need} or more"
            )
        m = min(remat.states, w * T)
        table = hsm_table(T, m, w)
    ops: list[tuple[Any, ...]] = []
    stack: list[tuple[Any, ...]] = [("node", 0, T, m)]
    held = peak = cost = 0
    while stack:
        item = stack.pop()
        if item[0] == "free":
            ops.append(item)
            held -= 1
            continue
        _, a, b, j = item
        if table is not None:
            y = int(table[1][b - a, j])
            chunk = max(1, j // w)
        else:
            k = _k_of(remat, T)
            y, chunk = (k if b - a > k else 0), k  # every k-th state, eq. (B27)
        if y == 0:
            ops.append(("leaf", a, b))
            cost, peak = cost + b - a, max(peak, held + w * (b - a))
            continue
        ops.append(("advance", a, a + y, chunk))
        peak = max(peak, held + w * min(chunk, y))  # the pieces in flight, then s_{a+y}
        cost, held = cost + y, held + 1
        stack += [("node", a, a + y, j), ("free", a + y), ("node", a + y, b, j - 1)]
    return Plan(tuple(ops), cost, peak)


def _rows(x: Any, a: int, b: int) -> Any:
    return None if x is None else x[a:b, ...]


def _mask_rows(layer_masks: Any, a: int, b: int) -> Any:
    return None if layer_masks is None else [m[a:b, ...] for m in layer_masks]


def _add(total: Any, part: Any) -> Any:
    return part if total is None else {k: total[k] + part[k] for k in total}


def _advance(params: Any, inputs: Any, state: Any, a: int, b: int, chunk: int, xp: Any,
             cell: Any, layer_masks: Any, recurrences: Any) -> Any:  # fmt: skip
    """s_b from s_a: steps a+1..b run in pieces of at most ``chunk``, only the last
    state kept (eqs. 19-20, B19)."""
    for c in range(a, b, chunk):
        e = min(c + chunk, b)
        out, _ = layers.forward(
            params, inputs[c:e, ...], state, xp, cell=cell, recurrences=recurrences,
            layer_masks=_mask_rows(layer_masks, c, e), with_output=False,
        )  # fmt: skip
        state = own_state(out.h_last, xp)  # shaped as h0
    return state


def own_state(state: Any, xp: Any) -> Any:
    """A copy of a last state: for one cell it is a view of the whole segment's states,
    which holding it would keep alive."""
    if isinstance(state, tuple):  # a state of two parts (LSTM's (h, c))
        return tuple(xp.asarray(part, copy=True) for part in state)
    return xp.asarray(state, copy=True)


def run(
    params: Any, inputs: Any, h0: Any, xp: Any, *, remat: Any, head: Callable[..., Any],
    head_rows: tuple[Any, ...] = (), cell: Any = "tanh", dropout_mask: Any = None,
    layer_masks: Any = None, recurrences: Any = model, want_inputs: bool = False,
    want_h0: bool = False,
) -> tuple[Any, dict[str, Any], Any, Any, Any]:  # fmt: skip
    """Execute :func:`plan` (T, remat): ``(loss, grads, h_last, d_inputs, d_h0)``.

    ``head(out, rows) -> (loss or None, dlogits, dstates)`` gives the cotangents of
    a segment's steps from their :class:`bptt.math.layers.Forward` ``out`` and ``rows``,
    the segment's rows of each array of ``head_rows`` ((T, ...) arrays or None);
    ``loss`` is the sum of the heads' losses (None if they give none).

    A bidirectional stack runs layer by layer (:mod:`bptt.math.remat_layerwise`); where
    the recurrences have a ``segment_scan`` (JAX) a uniform k runs as two scans over
    segments (:mod:`bptt.math.remat_scan`): one loop for XLA, whose liveness it keeps.
    """
    kw = dict(head=head, head_rows=head_rows, cell=cell, dropout_mask=dropout_mask,
              layer_masks=layer_masks, recurrences=recurrences, want_inputs=want_inputs,
              want_h0=want_h0)  # fmt: skip
    if layers.arch_of(params).directions == 2:  # a reverse cell needs the whole sequence
        from . import remat_layerwise

        single = sys.modules[__name__]  # the plan of one direction, which it runs per cell
        return remat_layerwise.run(params, inputs, h0, xp, remat=check(remat, 2), single=single,
                                   **kw)  # fmt: skip
    remat, T = check(remat, 1), inputs.shape[0]
    if hasattr(recurrences, "segment_scan"):  # loops XLA sees (a budget: its uniform k)
        k = scan_k(T, remat)
        if k is not None:
            from . import remat_scan

            return remat_scan.run(params, inputs, h0, xp, k=k, **kw)
    barrier = getattr(recurrences, "barrier", lambda tree: tree)  # JAX: no CSE, no hoisting
    held: dict[int, Any] = {0: h0}
    loss = grads = h_last = d = None
    pieces: list[Any] = []
    for op in plan(T, remat).ops:
        if op[0] == "advance":
            _, a, b, chunk = op
            start, d = barrier((held[a], d))  # after the later segments' backward passes
            held[b] = _advance(params, inputs, start, a, b, chunk, xp, cell, layer_masks,
                               recurrences)  # fmt: skip
        elif op[0] == "free":
            del held[op[1]]
        else:
            _, a, b = op
            start, d = barrier((held[a], d))  # a replay, not the first pass's values
            out, cache = layers.forward(
                params, inputs[a:b, ...], start, xp, cell=cell, recurrences=recurrences,
                dropout_mask=_rows(dropout_mask, a, b), layer_masks=_mask_rows(layer_masks, a, b),
                with_output="V" in params,  # no V: one cell of a stack (bptt.math.remat_layerwise)
            )  # fmt: skip  # the replay: the first pass's operations on steps a+1..b
            if b == T:
                h_last = own_state(out.h_last, xp)
            part, dlogits, dstates = head(out, tuple(_rows(r, a, b) for r in head_rows))
            del out
            loss = part if loss is None else loss + part
            g, dx, d = layers.backward(
                params, cache, dlogits, dstates, xp, want_inputs=want_inputs,
                want_h0=want_h0 or a > 0, recurrences=recurrences, d_last=d,
            )  # fmt: skip  # d: dL/ds_a, carried to the segment before, eq. (B25)
            del cache, dlogits, dstates
            grads = _add(grads, g)
            pieces.append(dx)
    d_inputs = xp.concat(pieces[::-1], axis=0) if want_inputs else None  # (T, B, M)
    return loss, grads, h_last, d_inputs, d if want_h0 else None


def loss_and_grad(
    params: Any, inputs: Any, targets: Any, *, h0: Any, head: str, weights: Any,
    dropout_mask: Any, xp: Any, recurrences: Any = model, cell: Any = "tanh",
    layer_masks: Any = None, remat: Any,
) -> tuple[Any, dict[str, Any], Any]:  # fmt: skip
    """:func:`bptt.math.step.loss_and_grad` under ``remat``: the head and its reduction run
    on each replayed segment (eq. B8: L = sum_t L_t, the weights the rows')."""

    scalar = isinstance(weights, float)

    def segment_head(out: Any, rows: tuple[Any, ...]) -> tuple[Any, Any, Any]:
        terms, dlogits = HEADS[head](out.logits, rows[0], xp)  # (n, B), (n, B, C)
        part, dlogits = reduce(terms, dlogits, weights if scalar else rows[1], xp)  # eq. (B8)
        return part, dlogits, None

    loss, grads, h_last, _, _ = run(
        params, inputs, h0, xp, remat=remat, head=segment_head,
        head_rows=(targets, None if scalar else weights), cell=cell,
        dropout_mask=dropout_mask, layer_masks=layer_masks, recurrences=recurrences,
    )  # fmt: skip
    return loss, {key: grads[key] for key in params}, h_last


def pullback(
    params: Any, inputs: Any, h0: Any, xp: Any, dlogits: Any, dstates: Any, *, remat: Any,
    cell: Any, dropout_mask: Any, layer_masks: Any, recurrences: Any, want_inputs: bool,
    want_h0: bool,
) -> tuple[dict[str, Any], Any, Any]:  # fmt: skip
    """:func:`bptt.math.layers.backward` under ``remat``, replaying from h0:
    ``(grads, d_inputs, d_h0)``."""

    def segment_head(out: Any, rows: tuple[Any, ...]) -> tuple[Any, Any, Any]:
        return None, rows[0], rows[1]

    _, grads, _, d_inputs, d_h0 = run(
        params, inputs, h0, xp, remat=remat, head=segment_head, head_rows=(dlogits, dstates),
        cell=cell,
        dropout_mask=dropout_mask, layer_masks=layer_masks, recurrences=recurrences,
        want_inputs=want_inputs, want_h0=want_h0,
    )  # fmt: skip
    return {key: grads[key] for key in params}, d_inputs, d_h0
