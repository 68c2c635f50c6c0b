"""Validation in bits per character, carrying the hidden state through the held-out text.

The held-out tail is laid out once as S parallel streams on the device, each
starting ``warmup`` characters before its first scored character, so that every
character is predicted from a carried state (as if one stream ran through the
whole text) while the sequential work is about len / S steps. One host read
per evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import backends
from ..execution import jax_exec
from ..math.heads import softmax_cross_entropy

__all__ = ["ValData", "evaluate", "layout_validation"]

LN2 = math.log(2.0)


@dataclass
class ValData:
    """The validation text laid out as S streams with warm-up, on the device."""

    inputs: Any  # (L, S) ids, compact (the text's ids dtype)
    targets: Any  # (L, S) ids, compact
    weight: Any  # (L, S) float, 1 where a target is scored (each exactly once)
    count: int  # scored characters: len(val) - 1
    index: Any = None  # the dtype each block's ids are cast to (None: used as they are)


def layout_validation(
    ids: np.ndarray, *, streams: int, warmup: int, backend: Any, dtype: str,
    part: tuple[int, int] = (0, 1),
) -> ValData | None:  # fmt: skip
    """Split the scored targets ids[1:] into ``streams`` contiguous pieces.

    Piece b starts its state ``warmup`` characters before its first scored
    target (never before the start of the text), so that every character is
    predicted from a carried state, as if one stream ran through the whole text,
    while the sequential length is about len(ids) / streams.

    ``part=(i, n)``: only the i-th of n near-equal runs of the pieces (one rank's
    share; None when it has none); ``count`` stays that of the whole text, so the
    parts' :func:`evaluate` add up to the whole's.
    """
    n = len(ids) - 1  # targets ids[1..n]
    S = max(1, min(streams, n))
    bounds = [1 + (b * n) // S for b in range(S + 1)]
    pieces = []
    for b in range(S):
        first, stop = bounds[b], bounds[b + 1]  # scored targets [first, stop)
        start = max(0, first - 1 - warmup)  # first input
        pieces.append((start, first, stop))
    index, parts = part
    pieces = pieces[index * S // parts : (index + 1) * S // parts]
    if not pieces:
        return None
    S = len(pieces)
    L = max(stop - 1 - start for start, _, stop in pieces)
    x = np.zeros((L, S), ids.dtype)
    y = np.zeros((L, S), ids.dtype)
    w = np.zeros((L, S), dtype)
    for b, (start, first, stop) in enumerate(pieces):
        length = stop - 1 - start
        x[:length, b] = ids[start : stop - 1]
        y[:length, b] = ids[start + 1 : stop]
        w[first - 1 - start : length, b] = 1.0
    inputs, targets = backend.asarray(x), backend.asarray(y)
    return ValData(inputs, targets, backend.asarray(w, dtype=dtype), n, backend.integer)


def _chunk_nats(model: Any, params: dict[str, Any], inputs: Any, targets: Any, weight: Any,
                h: Any) -> tuple[Any, Any]:  # fmt: skip
    """The weighted nats of one chunk (0-d) and the state after it (on JAX the body of
    :func:`_jax_nats`' scan over chunks, its recurrence one ``lax.scan``)."""
    xp, _ = backends.namespace_of({"params['U']": params["U"]})
    _, logits, h = model.forward(params, inputs, h0=h, check_values=False, return_state=True)
    terms, _ = softmax_cross_entropy(logits, targets, xp)  # (t, S, C) -> (t, S)
    return xp.sum(terms * weight), h  # eq. (23), summed


def evaluate(model: Any, params: dict[str, Any], val: ValData, *, chunk: int = 256) -> float:
    """Validation loss in bits per character, carrying the state through each stream
    (every layer's, for a stack).

    One host read at the end. ``chunk`` bounds memory: (chunk, S, D) states at a time.
    On JAX the whole evaluation is one jitted program (:func:`_jax_nats`: chunks of one
    length, at most ``chunk``, the last padded, at most one step per chunk more work):
    its first call at D = 256 took 3.2 s before (a program per chunk length, one for
    h0 = None, and the eager slices), 1.5 s now (benchmarks/NOTES.md, round 7, cont.).
    """
    xp, _ = backends.namespace_of({"params['U']": params["U"]})
    L, on_jax = val.inputs.shape[0], backends.namespace_library(xp) == "jax"
    cast = (lambda ids: ids) if val.index is None else (lambda ids: xp.astype(ids, val.index))
    if on_jax:  # one jitted program for the whole evaluation
        step = -(-L // -(-L // chunk))  # chunks of one length, at most ``chunk``
        run = jax_exec.jit(_jax_nats, ("model", "step", "index"))
        total = run(model, params, val.inputs, val.targets, val.weight, step=step,
                    index=val.index)  # fmt: skip
    else:
        total = xp.zeros((), dtype=params["U"].dtype, device=params["U"].device)
        h = None
        for t0 in range(0, L, chunk):
            t1 = min(t0 + chunk, L)
            nats, h = _chunk_nats(model, params, cast(val.inputs[t0:t1, ...]),
                                  cast(val.targets[t0:t1, ...]), val.weight[t0:t1, ...],
                                  h)  # fmt: skip
            total = total + nats
    nats = float(backends.backend_of(total).to_numpy(total))
    return nats / (val.count * LN2)


def _jax_nats(model: Any, params: dict[str, Any], inputs: Any, targets: Any, weight: Any, *,
              step: int, index: Any) -> Any:  # fmt: skip
    """The weighted nats of the whole text (0-d), traced once: the (L, S) arrays cut into
    chunks of ``step`` steps (the last padded with weight 0; its state is not read), the
    chunks one ``lax.scan`` (:mod:`bptt.execution.jax_exec`) whose body is :func:`_chunk_nats`,
    from a zero state (no program of its own for h0 = None)."""
    xp, _ = backends.namespace_of({"params['U']": params["U"]})
    L, S = inputs.shape
    n = -(-L // step)

    def chunks(a: Any) -> Any:  # (L, S) -> (n, step, S), zero rows appended
        tail = xp.zeros((n * step - L, S), dtype=a.dtype)
        return xp.reshape(xp.concat([a, tail], axis=0), (n, step, S))

    if index is not None:  # the ids as each block takes them
        inputs, targets = xp.astype(inputs, index), xp.astype(targets, index)

    def body(carry: Any, x: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        nats, h = _chunk_nats(model, params, x[0], x[1], x[2], carry[1])
        return (carry[0] + nats, h), ()

    h = model.unpack_state(xp.zeros(model.carry_shape(S), dtype=params["U"].dtype))
    zero = xp.zeros((), dtype=params["U"].dtype)
    xs = tuple(chunks(a) for a in (inputs, targets, weight))  # (n, step, S) each
    (total, _), _ = jax_exec.scan(body, (zero, h), xs, xp)
    return total
