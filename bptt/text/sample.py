"""Sampling text from a character-level RNN, on the parameters' own device.

The uniforms that pick each character are drawn up front on the host from a
seeded NumPy generator and moved once; each character is then chosen on the
device by inverting the cumulative distribution, and the chosen id is fed back
as the next input without leaving the device. The ids are read back once, at
the end. So sampling costs no host sync per character, and one seed gives the
same text on every backend (up to float rounding at a CDF boundary).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backends
from ..host.limits import require_memory
from .data import Vocab

__all__ = ["memory_bytes", "sample", "sample_ids"]


LOG_FLOOR = -1000.0  # exp(LOG_FLOOR) is 0 in float32 and float64: a choice never made
BLOCK = 1024  # chosen ids are joined this many at a time (no per-character array objects)


def memory_bytes(length: int, itemsize: int) -> int:
    """A lower bound of what sampling ``length`` characters holds at once: the uniforms
    (host float64 and device copy), the ids (device, host) and the text (up to 4 bytes
    a character)."""
    return length * (8 + itemsize + 8 + 8 + 4)


def _log_weights(g: Any, temperature: float, xp: Any) -> Any:
    """log of the unnormalised softmax(g / temperature), clamped at LOG_FLOOR, for every
    positive temperature (eq. 22 in log space) without overflow: d = g - max g <= 0 is
    clamped at LOG_FLOOR * temperature before dividing, so d / temperature lies in
    [LOG_FLOOR, 0]. Temperatures beyond the dtype's range are their limits: below its
    smallest normal number (1e-300 in float32, which would be 0 there) the argmax gets
    log weight 0 and every other entry LOG_FLOOR (greedy); above its largest, every
    entry 0 (uniform)."""
    info = xp.finfo(g.dtype)
    d = g - xp.max(g, axis=-1, keepdims=True)  # (1, C), <= 0
    if temperature < float(info.smallest_normal):  # 0 in this dtype (or flushed to 0): greedy
        return xp.astype(d < 0, g.dtype) * LOG_FLOOR  # (1, C)
    if temperature > float(info.max):  # infinite in this dtype: uniform
        return xp.zeros_like(d)  # (1, C)
    floor = max(LOG_FLOOR * temperature, -float(info.max))
    return xp.maximum(d, xp.full_like(d, floor)) / temperature  # (1, C), in [LOG_FLOOR, 0]


def sample_ids(
    model: Any,
    params: dict[str, Any],
    prime_ids: Any,
    *,
    length: int,
    temperature: float = 1.0,
    seed: Any = 0,
    h0: Any = None,
    check_values: bool = True,
) -> np.ndarray:
    """``length`` ids (host, int64) following ``prime_ids`` (P,) ids on the device, P >= 1.

    Each step: probabilities softmax(g_t / temperature) (eq. 22), computed in log space
    so that every positive temperature works (1e-300 is the greedy choice, 1e300
    uniform), and the id i = #{j : cdf_j < u * cdf_C} for a uniform u, clamped to
    C - 1. ``check_values`` checks the prime's ids (one device read) before the loop,
    which makes none. A ``length`` whose arrays cannot fit in memory is refused first
    (:class:`bptt.host.limits.TooLargeError`). A
    stack carries one state per cell ((L K, 1, D), as ``h0``).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length: expected an integer >= 0; got {length!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)):
        raise ValueError(f"temperature: expected a positive number; got {temperature!r}")
    if temperature <= 0:
        raise ValueError(f"temperature: expected a positive number; got {temperature!r}")
    be = backends.backend_of(params["U"])
    xp = be.xp
    P = prime_ids.shape[0]
    if P < 1:
        raise ValueError("prime: expected at least one character")
    C = params["V"].shape[0]
    dtype = params["U"].dtype
    itemsize = xp.finfo(dtype).bits // 8
    require_memory(memory_bytes(length, itemsize), f"sampling {length:,} characters",
                   backend=be, fix="ask for a smaller --length")  # fmt: skip
    with be.activate():  # CuPy: kernels run on the parameters' GPU
        u = be.asarray(np.random.default_rng(seed).random(length), dtype=dtype)  # (length,)
        last = xp.asarray(C - 1, dtype=be.integer, device=be.device)  # (), made once
        _, logits, h = model.forward(
            params, xp.reshape(prime_ids, (P, 1)), h0=h0, check_values=check_values,
            return_state=True,
        )  # (P, 1, C); h (1, D) or (L K, 1, D)  # fmt: skip
        g = logits[-1, ...]  # (1, C)
        blocks, chosen = [], []  # (1,) ids on the device; never written in place (JAX)
        for i in range(length):
            e = xp.exp(_log_weights(g, temperature, xp))  # (1, C), the largest is 1
            cdf = xp.cumulative_sum(e, axis=-1)  # (1, C), unnormalised
            below = xp.astype(cdf < u[i] * cdf[:, -1:], be.integer)  # (1, C)
            idx = xp.minimum(xp.sum(below, axis=-1), last)  # (1,)
            chosen.append(idx)
            if len(chosen) == BLOCK:
                blocks, chosen = [*blocks, xp.concat(chosen)], []
            _, logits, h = model.forward(params, xp.reshape(idx, (1, 1)), h0=h,
                                         check_values=False, return_state=True)  # fmt: skip
            g = logits[-1, ...]
        if not blocks and not chosen:
            return np.zeros((0,), np.int64)
        return be.to_numpy(xp.concat([*blocks, *chosen])).astype(np.int64)  # (length,): one read


def sample(
    model: Any,
    params: dict[str, Any],
    vocab: Vocab | str,
    *,
    length: int = 500,
    temperature: float = 1.0,
    prime: str = "",
    seed: Any = 0,
) -> str:
    """``length`` characters continuing ``prime`` (not included in the result).

    An empty prime starts from a newline (or the first character of the
    vocabulary if it has none) and a zero state.
    """
    vocab = vocab if isinstance(vocab, Vocab) else Vocab(vocab)
    M = params["U"].shape[1]
    if len(vocab) != M:
        raise ValueError(f"vocab: {len(vocab)} characters for a model with M = {M} inputs")
    if not prime:
        prime = "\n" if "\n" in vocab.chars else vocab.chars[0]
    be = backends.backend_of(params["U"])
    ids = be.asarray(vocab.encode(prime, name="prime"))  # (P,)
    out = sample_ids(
        model, params, ids, length=length, temperature=temperature, seed=seed,
        check_values=False,
    )  # encode() checked the prime  # fmt: skip
    return vocab.decode(out)
