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
    """The weighted nats of one chunk (0-d) and the state after it: on JAX one jitted
    program per chunk length (its recurrence one ``lax.scan``)."""
    xp, _ = backends.namespace_of({"params['U']": params["U"]})
    _, logits, h = model.forward(params, inputs, h0=h, check_values=False, return_state=True)
    terms, _ = softmax_cross_entropy(logits, targets, xp)  # (t, S, C) -> (t, S)
    return xp.sum(terms * weight), h  # eq. (23), summed


def evaluate(model: Any, params: dict[str, Any], val: ValData, *, chunk: int = 256) -> float:
    """Validation loss in bits per character, carrying the state through each stream
    (every layer's, for a stack).

    One host read at the end. ``chunk`` bounds memory: (chunk, S, D) states at a time.
    """
    xp, _ = backends.namespace_of({"params['U']": params["U"]})
    L, on_jax = val.inputs.shape[0], backends.namespace_library(xp) == "jax"
    total = xp.zeros((), dtype=params["U"].dtype, device=params["U"].device)
    h = None
    cast = (lambda ids: ids) if val.index is None else (lambda ids: xp.astype(ids, val.index))
    run = jax_exec.jit(_chunk_nats, ("model",)) if on_jax else _chunk_nats
    for t0 in range(0, L, chunk):
        t1 = min(t0 + chunk, L)
        nats, h = run(model, params, cast(val.inputs[t0:t1, ...]),
                      cast(val.targets[t0:t1, ...]), val.weight[t0:t1, ...], h)  # fmt: skip
        total = total + nats
    nats = float(backends.backend_of(total).to_numpy(total))
    return nats / (val.count * LN2)
