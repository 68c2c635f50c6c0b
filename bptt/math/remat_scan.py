"""Memory-bounded BPTT as two loops over segments: ``remat=k`` (and ``"sqrt"``) on JAX.

:func:`bptt.math.remat.run` executes a plan as a Python list of operations; traced by
``jax.jit`` that is a straight-line program of every advance and replay, whose
buffers XLA:CPU schedules as it likes (it kept them alive: no memory saved). Here
the uniform plan of every k-th state (eq. B27) is written as loops XLA sees as
loops, through the recurrences' ``segment_scan`` (``lax.scan`` under a trace,
:mod:`bptt.execution.jax_exec`; the Python loop eagerly):

- forward: segment 0 advanced from h0, then a scan over segments 1..n-1 whose body
  advances one segment (:func:`bptt.math.layers.forward` without the output) and emits
  its start state: the checkpoints s_k, s_2k, ... (n-1 states), eqs. (19)-(20);
- the tail (the last segment: k steps, or the T mod k left over) replayed from the
  last checkpoint with its head and pullback (eq. B25 with d_T = 0);
- backward: a reverse scan over segments n-1..1 whose body replays one segment from
  its checkpoint, runs the head on its rows and its pullback with the gradient d
  carried from the segment after (eq. B25); the carry holds d, the running sums of
  the parameter gradients and of the loss;
- segment 0 replayed from h0 last (so h0 None stays None, as in full BPTT).

A loop body's buffers live for one iteration, so the step holds the checkpoints and
one segment's cache: XLA's ``temp_size_in_bytes`` follows eq. (B27)
(benchmarks/remat_jit_memory.py). The operations are those of the plan of
:func:`bptt.math.remat.plan` (T, k) in the same order; the gradients equal full BPTT's to
rounding. Pure math: ``xp``, the recurrences' loops and :mod:`bptt.math.layers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import layers, model

__all__ = ["Fields", "run"]


def _parts(state: Any) -> tuple[Any, ...]:
    return state if isinstance(state, tuple) else (state,)


def _whole(parts: Any, two: bool) -> Any:
    return tuple(parts) if two else parts[0]


def _add(total: Any, part: Any) -> Any:
    if part is None:
        return total
    if isinstance(part, dict):
        return part if total is None else {k: total[k] + part[k] for k in total}
    return part if total is None else total + part


class Fields:
    """Per-step arrays (T, ...) of a pass, None kept out of the loops: ``rows(a, b)``
    and ``segments(a, n, k)`` ((n, k, ...) arrays) give the present ones, flat;
    ``unpack(flat)`` puts the Nones back in their places."""

    def __init__(self, fields: tuple[Any, ...]):
        self.fields = fields
        self.none = tuple(f is None for f in fields)

    def rows(self, a: int, b: int) -> tuple[Any, ...]:
        return tuple(f[a:b, ...] for f in self.fields if f is not None)

    def segments(self, a: int, n: int, k: int, xp: Any) -> tuple[Any, ...]:
        return tuple(
            xp.reshape(f[a : a + n * k, ...], (n, k, *f.shape[1:]))
            for f in self.fields if f is not None
        )  # fmt: skip  # (n, k, ...) each

    def unpack(self, flat: tuple[Any, ...]) -> tuple[Any, ...]:
        it = iter(flat)
        return tuple(None if gone else next(it) for gone in self.none)


class _Rows(Fields):
    """The per-step arrays of a step: inputs, dropout_mask, layer_masks, the head's rows;
    ``step_fields(flat)`` gives them back as those four."""

    def __init__(self, inputs: Any, dropout_mask: Any, layer_masks: Any, head_rows: Any):
        self.n_masks = 0 if layer_masks is None else len(layer_masks)
        super().__init__((inputs, dropout_mask, *(layer_masks or ()), *head_rows))

    def step_fields(self, flat: tuple[Any, ...]) -> tuple[Any, Any, Any, tuple[Any, ...]]:
        f = self.unpack(flat)
        masks = None if self.n_masks == 0 else list(f[2 : 2 + self.n_masks])
        return f[0], f[1], masks, f[2 + self.n_masks :]


class _Segment:
    """The two bodies on one segment's rows (``flat``, :class:`_Rows`): ``advance`` and
    ``leaf`` (replay, head, pullback)."""

    def __init__(self, params: Any, xp: Any, kind: Any, recurrences: Any, fields: _Rows,
                 head: Callable[..., Any], want_inputs: bool) -> None:  # fmt: skip
        self.params, self.xp, self.kind, self.recurrences = params, xp, kind, recurrences
        self.fields, self.head, self.want_inputs = fields, head, want_inputs

    def advance(self, start: Any, flat: tuple[Any, ...]) -> Any:
        x, _, masks, _ = self.fields.step_fields(flat)
        out, _ = layers.forward(self.params, x, start, self.xp, cell=self.kind,
                                recurrences=self.recurrences, layer_masks=masks,
                                with_output=False)  # fmt: skip
        return out.h_last  # s_b from s_a, eqs. (19)-(20)

    def leaf(self, start: Any, flat: tuple[Any, ...], d: Any, want_s0: bool) -> tuple[Any, ...]:
        """``(loss part, grads, dx, d_a, s_b)`` of the segment, ``d`` reaching s_b."""
        x, drop, masks, rows = self.fields.step_fields(flat)
        out, cache = layers.forward(
            self.params, x, start, self.xp, cell=self.kind, recurrences=self.recurrences,
            dropout_mask=drop, layer_masks=masks, with_output="V" in self.params,
        )  # fmt: skip  # the replay: the first pass's operations on the segment
        part, dlogits, dstates = self.head(out, rows)
        g, dx, d = layers.backward(
            self.params, cache, dlogits, dstates, self.xp, want_inputs=self.want_inputs,
            want_h0=want_s0, recurrences=self.recurrences, d_last=d,
        )  # fmt: skip  # eq. (B25)
        return part, g, dx, d, out.h_last


def run(
    params: Any, inputs: Any, h0: Any, xp: Any, *, k: int, head: Callable[..., Any],
    head_rows: tuple[Any, ...] = (), cell: Any = "tanh", dropout_mask: Any = None,
    layer_masks: Any = None, recurrences: Any = model, want_inputs: bool = False,
    want_h0: bool = False,
) -> tuple[Any, dict[str, Any], Any, Any, Any]:  # fmt: skip
    """:func:`bptt.math.remat.run` for ``remat=k`` (one direction) as two scans over
    segments (the module doc): ``(loss, grads, h_last, d_inputs, d_h0)``."""
    T, scan = inputs.shape[0], recurrences.segment_scan
    barrier = getattr(recurrences, "barrier", lambda tree: tree)
    kind = layers.get_cell(cell) if isinstance(cell, str) else cell
    two, witness = kind.state_parts == 2, tuple(params.values())
    fields = _Rows(inputs, dropout_mask, layer_masks, head_rows)
    seg = _Segment(params, xp, kind, recurrences, fields, head, want_inputs)
    n = (T - 1) // k  # full segments before the tail (the tail: 1..k steps)
    if n == 0:  # k >= T: one segment, full BPTT
        loss, grads, dx, d, h_last = seg.leaf(h0, fields.rows(0, T), None, want_h0)
        return loss, grads, h_last, dx, d
    s = seg.advance(h0, fields.rows(0, k))  # s_k
    checkpoints: tuple[Any, ...] = ()
    if n > 1:  # s_k .. s_{(n-1)k} as the starts of segments 1..n-1, and s_{nk}

        def forward_body(carry: Any, flat: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
            start = _whole(carry, two)
            return _parts(seg.advance(start, flat)), _parts(start)

        s, checkpoints = scan(forward_body, _parts(s), fields.segments(k, n - 1, k, xp), xp,
                              witness=witness)  # fmt: skip
        s = _whole(s, two)
    loss, grads, dx_tail, d, h_last = seg.leaf(s, fields.rows(n * k, T), None, True)
    pieces = [dx_tail]
    if n > 1:

        def backward_body(carry: Any, flat: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
            d, total, part_sum = carry
            parts, rest = flat[: len(checkpoints)], flat[len(checkpoints) :]
            start, d = barrier((_whole(parts, two), _whole(d, two)))
            part, g, dx, d, _ = seg.leaf(start, rest, d, True)
            ys = (dx,) if want_inputs else ()
            return (_parts(d), _add(total, g), _add(part_sum, part)), ys

        xs = (*checkpoints, *fields.segments(k, n - 1, k, xp))
        (d, grads, loss), ys = scan(backward_body, (_parts(d), grads, loss), xs, xp,
                                    reverse=True, witness=witness)  # fmt: skip
        d = _whole(d, two)
        if want_inputs:
            pieces.append(xp.reshape(ys[0], ((n - 1) * k, *ys[0].shape[2:])))  # (.., B, M)
    start, d = barrier((h0, d))  # segment 0 last, from h0 itself
    part, g, dx, d, _ = seg.leaf(start, fields.rows(0, k), d, want_h0)
    d_inputs = xp.concat([dx, *pieces[::-1]], axis=0) if want_inputs else None  # (T, B, M)
    return _add(loss, part), _add(grads, g), h_last, d_inputs, d
