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

from . import backends
from .api import forward
from .data import Vocab

__all__ = ["sample", "sample_ids"]


def sample_ids(
    params: dict[str, Any],
    prime_ids: Any,
    *,
    length: int,
    temperature: float = 1.0,
    seed: Any = 0,
    h0: Any = None,
    check_values: bool = True,
    nonlinearity: str = "tanh",
) -> np.ndarray:
    """``length`` ids (host, int64) following ``prime_ids`` (P,) ids on the device, P >= 1.

    Each step: probabilities softmax(g_t / temperature) (eq. 22), and the id
    i = #{j : cdf_j < u * cdf_C} for a uniform u, clamped to C - 1. ``check_values``
    checks the prime's ids (one device read) before the loop, which makes none. A
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
    with be.activate():  # CuPy: kernels run on the parameters' GPU
        u = be.asarray(np.random.default_rng(seed).random(length), dtype=dtype)  # (length,)
        last = xp.asarray(C - 1, dtype=be.integer, device=be.device)  # (), made once
        _, logits, h = forward(
            params, xp.reshape(prime_ids, (P, 1)), h0=h0, nonlinearity=nonlinearity,
            check_values=check_values, return_state=True,
        )  # (P, 1, C); h (1, D) or (L K, 1, D)  # fmt: skip
        g = logits[-1, ...]  # (1, C)
        chosen = []  # (1,) ids on the device; never written in place (JAX arrays cannot be)
        for i in range(length):
            z = g / temperature  # (1, C)
            e = xp.exp(z - xp.max(z, axis=-1, keepdims=True))  # (1, C)
            cdf = xp.cumulative_sum(e, axis=-1)  # (1, C), unnormalised
            below = xp.astype(cdf < u[i] * cdf[:, -1:], be.integer)  # (1, C)
            idx = xp.minimum(xp.sum(below, axis=-1), last)  # (1,)
            chosen.append(idx)
            _, logits, h = forward(params, xp.reshape(idx, (1, 1)), h0=h,
                                   nonlinearity=nonlinearity, check_values=False,
                                   return_state=True)  # fmt: skip
            g = logits[-1, ...]
        if not chosen:
            return np.zeros((0,), np.int64)
        return be.to_numpy(xp.concat(chosen)).astype(np.int64)  # (length,): one read


def sample(
    params: dict[str, Any],
    vocab: Vocab | str,
    *,
    length: int = 500,
    temperature: float = 1.0,
    prime: str = "",
    seed: Any = 0,
    nonlinearity: str = "tanh",
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
        params, ids, length=length, temperature=temperature, seed=seed, check_values=False,
        nonlinearity=nonlinearity,
    )  # encode() checked the prime  # fmt: skip
    return vocab.decode(out)
