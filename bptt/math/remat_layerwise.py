"""Memory-bounded BPTT for a bidirectional stack: remat per layer and direction.

A reverse cell's state at step t depends on every later input, so a segment of time
cannot be replayed through a whole bidirectional stack from stored states of its
start alone (the reverse cells would need theirs from its end, and a layer above
needs both directions of the layer below at every step). The plan here works layer
by layer instead (docs/derivation.md, "Memory-bounded BPTT"):

1. forward, layer by layer: each cell runs over its input segment by segment (the
   leaves of :func:`bptt.math.remat.plan`), keeping its output states s_1..s_T (what the
   layer above reads) but no per-step cache (gates, U x + b); the layer's output,
   after its dropout mask, is the next layer's input and is kept (eq. B19);
2. the head on the top layer's output, segment by segment: the loss, dV, dc and
   dL/dS of the top layer (eqs. B8, B10, B11), one (T, B, K D) array;
3. backward, layer by layer from the top: each cell is a one-direction, one-layer
   model on its input (time-flipped for a reverse cell, eq. B21) whose only loss is
   dL/dS: :func:`bptt.remat.pullback` replays it under the plan from its h0 and
   gives its weight gradients, dL/dx (summed over the two directions, then through
   the layer mask: the dL/dS of the layer below, eq. B20) and dL/ds_0.

Steps 1 and 2 walk the segments through :class:`Segments`: under a uniform plan (every
k-th state) and recurrences with a ``segment_scan`` (JAX), the full segments after the
first are one loop, so the traced program does not grow with T; otherwise (the
dynamic program's segments, or NumPy) a Python loop.

What stays O(T): one (T, B, K D) array per layer boundary (the layers' inputs) and
dL/dS of the layer being backpropagated; what is bounded by the plan: the per-step
cache of every cell (states, gates, U x + b, dz), the part that full BPTT multiplies
by the number of cells and gates. Every operation is the first pass's on the same
rows, masks and states, so the states are bit for bit those of full BPTT on NumPy
and the gradients equal to rounding (sums over segments).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import layers, model
from .remat_scan import Fields

__all__ = ["Segments", "join", "run", "segments"]


def segments(T: int, remat: Any, single: Any) -> list[tuple[int, int]]:
    """The replay segments (a, b) of ``single.plan`` (T, remat), in time order."""
    return sorted((op[1], op[2]) for op in single.plan(T, remat).ops if op[0] == "leaf")


def _add(total: Any, part: Any) -> Any:
    return part if total is None else {k: total[k] + part[k] for k in total}


def _cell(params: Any, layer: int, direction: int, kind: Any) -> dict[str, Any]:
    """Cell (layer, direction) as a one-layer model without an output (no V)."""
    p = layers.cell_params(params, layer, direction, kind.extra_biases)
    return {name: value for name, value in p.items() if value is not None}


def _flip(x: Any, xp: Any) -> Any:
    return xp.flip(x, axis=0)  # time reversed: the reverse cell's order, eq. (B21)


class Segments:
    """How a pass walks the segments: ``segs`` (a, b) in time order, in Python, or, where
    the recurrences have a ``segment_scan`` and the plan is uniform (every k-th state),
    as one loop over the full segments after the first (:meth:`over`)."""

    def __init__(self, T: int, remat: Any, single: Any, recurrences: Any, witness: Any):
        self.k = single.scan_k(T, remat) if hasattr(recurrences, "segment_scan") else None
        self.segs = segments(T, remat, single) if self.k is None else None
        self.T, self.recurrences, self.witness = T, recurrences, witness

    def over(self, body: Callable[..., Any], carry: Any, fields: tuple[Any, ...],
             xp: Any) -> tuple[Any, list[Any]]:  # fmt: skip
        """``body(carry, rows) -> (carry, out)`` over the segments in time order, ``rows``
        each field's rows (None stays None): ``(carry, pieces)``, the outs in time order
        (:func:`join` makes each a (T, ...) array)."""
        walked = Fields(fields)
        at = lambda a, b: walked.unpack(walked.rows(a, b))  # noqa: E731  # rows a..b-1
        if self.k is None:
            pieces = []
            for a, b in self.segs:
                carry, out = body(carry, at(a, b))
                pieces.append(out)
            return carry, pieces
        k, T = self.k, self.T
        n = T // k  # full segments: the first runs outside the loop (the carry's form)
        carry, first = body(carry, at(0, k))
        pieces = [first]
        if n > 1:
            step = lambda c, flat: body(c, walked.unpack(flat))  # noqa: E731
            xs = walked.segments(k, n - 1, k, xp)  # (n - 1, k, ...) each
            carry, ys = self.recurrences.segment_scan(step, carry, xs, xp, witness=self.witness)
            pieces.append(tuple(xp.reshape(y, ((n - 1) * k, *y.shape[2:])) for y in ys))
        if n * k < T:
            carry, tail = body(carry, at(n * k, T))
            pieces.append(tail)
        return carry, pieces


def join(pieces: list[tuple[Any, ...]], xp: Any) -> list[Any]:
    """The outs of :meth:`Segments.over`, each joined along time: (T, ...) arrays."""
    return [xp.concat(list(p), axis=0) for p in zip(*pieces, strict=True)]


def _run_cell(p: Any, x: Any, s0: Any, xp: Any, kind: Any, recurrences: Any,
              walk: Segments, single: Any) -> tuple[Any, Any]:  # fmt: skip
    """One cell over ``x`` segment by segment: its states s_1..s_T (T, B, D) and its
    last state; the per-segment cache is let go (eqs. 19-20)."""

    def body(state: Any, rows: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        out, _ = layers.forward(p, rows[0], state, xp, cell=kind, recurrences=recurrences,
                                with_output=False)  # fmt: skip
        return single.own_state(out.h_last, xp), (out.states,)  # (b - a, B, D)

    state, pieces = walk.over(body, s0, (x,), xp)
    return join(pieces, xp)[0], state  # (T, B, D)


def _forward(params: Any, inputs: Any, h0: Any, xp: Any, kind: Any, arch: Any,
             layer_masks: Any, recurrences: Any, walk: Segments,
             single: Any) -> tuple[Any, list[Any], Any]:  # fmt: skip
    """The stack's output (T, B, K D), each layer's input, and h_last shaped as h0."""
    x, xs, last = inputs, [], []
    for layer in range(arch.layers):
        if layer > 0 and layer_masks is not None:
            x = x * layer_masks[layer - 1]  # (T, B, K D): dropout between layers, eq. (B19)
        xs.append(x)
        outs = []
        for d in range(arch.directions):
            x_d = _flip(x, xp) if d else x
            s0 = layers.cell_state(h0, arch, layer, d)
            states, s_last = _run_cell(_cell(params, layer, d, kind), x_d, s0, xp, kind,
                                       recurrences, walk, single)  # fmt: skip
            outs.append(_flip(states, xp) if d else states)
            last.append(s_last)
        x = outs[0] if arch.directions == 1 else xp.concat(outs, axis=-1)  # (T, B, K D)
    return x, xs, layers.stack_states(last, arch, xp)


def _head(params: Any, top: Any, xp: Any, head: Callable[..., Any], head_rows: Any,
          dropout_mask: Any, walk: Segments) -> tuple[Any, Any, Any]:  # fmt: skip
    """The head segment by segment: ``(loss, {V, c}, pieces)``, the pieces of dL/dS
    (T, B, K D) of the top layer in time order (eqs. B10, B11, plus a user's dstates,
    eq. B24), joined by the caller once the top layer's output is let go."""

    def body(carry: Any, rows: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        top_rows, drop, rows_of = rows[0], rows[1], rows[2:]
        logits, out_states = model.output(params, top_rows, drop, xp)  # (n, B, C)
        part, dlogits, dstates = head(layers.Forward(top_rows, logits, None), rows_of)
        if dlogits is None:
            g = {k: xp.zeros_like(params[k]) for k in ("V", "c") if params.get(k) is not None}
            dS = dstates
        else:
            g = model.output_grads(params, dlogits, out_states, xp)  # dV, dc, eq. (B10)
            dS = model.state_grads(params, dlogits, drop, xp)  # (n, B, K D), eq. (B11)
            dS = dS if dstates is None else dS + dstates
        if dS is None:
            dS = xp.zeros_like(top_rows)
        loss, grads = carry
        return (part if loss is None else loss + part, _add(grads, g)), (dS,)

    (loss, grads), pieces = walk.over(body, (None, None), (top, dropout_mask, *head_rows), xp)
    return loss, grads, pieces


def run(
    params: Any, inputs: Any, h0: Any, xp: Any, *, remat: Any, head: Callable[..., Any],
    head_rows: tuple[Any, ...] = (), cell: Any = "tanh", dropout_mask: Any = None,
    layer_masks: Any = None, recurrences: Any = model, want_inputs: bool = False,
    want_h0: bool = False, single: Any,
) -> tuple[Any, dict[str, Any], Any, Any, Any]:  # fmt: skip
    """:func:`bptt.math.remat.run` for any stack, layer by layer (the module doc):
    ``(loss, grads, h_last, d_inputs, d_h0)``, ``head`` as there. ``single``: the
    one-direction plan (:mod:`bptt.math.remat`: its ``plan``, ``own_state`` and
    ``pullback``), handed in because it is what calls this module for two directions."""
    arch = layers.arch_of(params)
    kind = layers.get_cell(cell) if isinstance(cell, str) else cell
    walk = Segments(inputs.shape[0], remat, single, recurrences, tuple(params.values()))
    top, xs, h_last = _forward(params, inputs, h0, xp, kind, arch, layer_masks, recurrences,
                               walk, single)  # fmt: skip
    loss, grads, pieces = _head(params, top, xp, head, head_rows, dropout_mask, walk)
    del top  # before the pieces are joined: a lower peak
    (dS,) = join(pieces, xp)  # (T, B, K D)
    del pieces
    D = params["W"].shape[1]
    d_inputs, d_h0 = None, [None] * (arch.layers * arch.directions)
    for layer in reversed(range(arch.layers)):
        x, dX = xs.pop(), None  # this layer's input, let go after it
        down = layer > 0 or want_inputs
        for d in range(arch.directions):
            dS_d = dS if arch.directions == 1 else dS[..., d * D : (d + 1) * D]  # (T, B, D)
            x_d, dS_d = (_flip(x, xp), _flip(dS_d, xp)) if d else (x, dS_d)
            g, dx, d_h0[layer * arch.directions + d] = single.pullback(
                _cell(params, layer, d, kind), x_d, layers.cell_state(h0, arch, layer, d), xp,
                None, dS_d, remat=remat, cell=kind, dropout_mask=None, layer_masks=None,
                recurrences=recurrences, want_inputs=down, want_h0=want_h0,
            )  # fmt: skip  # the cell under the plan, its loss dL/dS only
            grads.update({f"{k}{layers.suffix(layer, d)}": v for k, v in g.items()})
            if down:
                dx = _flip(dx, xp) if d else dx  # (T, B, M_l), eq. (B20)/(B22)
                dX = dx if dX is None else dX + dx
        mask = None if layer == 0 or layer_masks is None else layer_masks[layer - 1]
        dS = dX if mask is None else dX * mask  # through the dropout between layers
    d_inputs = dS if want_inputs else None
    dh0 = layers.stack_states(d_h0, arch, xp) if want_h0 else None  # shaped as h0
    return loss, grads, h_last, d_inputs, dh0
