"""Reproducible random numbers on the device, from standard integer operations alone.

Dropout masks are drawn by a counter-based generator: element ``i`` of the
(flattened, C-order) output is a pure function of ``(seed, step, i)``, so the
same call gives the same bits on NumPy, CuPy, torch, array_api_strict and JAX,
on any device, with no generator state to carry and no host round trip.

The mixing function is Chris Wellons' ``lowbias32`` integer hash (found by his
"hash prospector" search, https://github.com/skeeto/hash-prospector), a
bijection of 32-bit words built from xor-shifts and odd multiplications mod 2^32:

    H(x):  x ^= x >> 16;  x *= 0x7feb352d;  x ^= x >> 15;  x *= 0x846ca68b;  x ^= x >> 16

Per call, two 32-bit keys come from the seed and the step (all mod 2^32):

    s1 = H(seed),  s2 = H(seed ^ 0x5bd1e995)      (on the host, once per call)
    k1 = H(step ^ s1),  k2 = k1 ^ s2                (on the device if step is an array)

and the word for counter ``j`` is two keyed rounds, in the spirit of
Random123's Philox (a few cheap bijective rounds, a key xored in before each):

    bits[j] = H(H(j ^ k1) ^ k2)

For a fixed seed, distinct steps give distinct ``k1`` (H is a bijection), and
``(seed, step) -> (k1, k2)`` is one-to-one, so no two calls share a stream.
A single round ``H(j ^ k)`` would not do: every step would then be the same
sequence with its indices permuted (``H(j ^ k') = H((j ^ k ^ k') ^ k)``).
Uniforms are the top 24 bits, ``u = (bits >> 8) / 2^24``: exact in float32.
Dropout draws two decisions per word, from its high and its low 16 bits (see
:func:`dropout_mask`). It is a statistical generator for dropout, not a
cryptographic one.

Words are uint32 (wrapping arithmetic, 8 operations per hash) on every library
but torch, whose uint32 lacks ``>>`` and comparisons on the CPU (torch 2.13:
"rshift_cpu" / "gt_cpu" not implemented for 'UInt32'); there they are int64 in
[0, 2^32), 11 operations per hash. :func:`_word_dtype` picks one from the
namespace, once per call. Both give the same bits because every step is exact:

* int64 products stay below 2^63: ``0x7feb352d < 2^31``, and the other
  multiplier is applied as ``x * 0x846ca68b = -(x * 0x7b935975) mod 2^32``
  (``0x7b935975 = 2^32 - 0x846ca68b < 2^31``), then masked with ``& 0xFFFFFFFF``;
* right shifts only see non-negative values;
* casting a step to uint32 wraps it mod 2^32 (as on NumPy, CuPy, JAX);
* where Python ints are taken as int32 first (JAX without x64, which refuses
  ints >= 2^31 against uint32 arrays), larger constants become 0-d arrays with
  ``xp.full(..., device=device)``.

Arrays the generator creates itself are updated in place (``x ^= ...``), which
saves NumPy an allocation per operation; JAX, whose arrays are immutable, just
rebinds the name.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from ..backends import namespace_library

__all__ = ["dropout_mask", "random_bits", "uniform"]

MASK32 = 0xFFFFFFFF
MUL1 = 0x7FEB352D  # lowbias32's first multiplier (< 2^31)
MUL2 = 0x846CA68B  # lowbias32's second multiplier (>= 2^31)
NEG_MUL2 = 0x7B935975  # 2^32 - MUL2 (< 2^31), for int64 words
SEED_TWEAK = 0x5BD1E995  # any constant: makes s2 differ from s1
TWO_POW_M24 = 2.0**-24


def _word_dtype(xp: Any) -> Any:
    """uint32, or int64 on torch (no uint32 ``>>`` nor comparisons on its CPU)."""
    return xp.int64 if namespace_library(xp) == "torch" else xp.uint32


class _Host:
    """Words as Python ints, for the keys computed on the host."""

    def wrap(self, x: int) -> int:
        return x & MASK32

    def times_mul2(self, x: int) -> int:
        return (x * MUL2) & MASK32


class _Words:
    """How 32-bit words live on one device: uint32, or int64 in [0, 2^32) on torch."""

    def __init__(self, xp: Any, device: Any) -> None:
        self.xp, self.device = xp, device
        self.dtype = _word_dtype(xp)
        self.wide = self.dtype == xp.int64
        integral = xp.__array_namespace_info__().default_dtypes(device=device)["integral"]
        self.int32_scalars = integral == xp.int32  # JAX without x64
        self.mul2 = None if self.wide else self.const(MUL2)

    def wrap(self, x: Any) -> Any:
        """Reduce mod 2^32 after a product or a left shift (uint32 already wrapped)."""
        if self.wide:
            x &= MASK32
        return x

    def times_mul2(self, x: Any) -> Any:
        """``x * 0x846CA68B mod 2^32``: 1 operation in uint32, 3 in int64."""
        if not self.wide:
            x *= self.mul2
            return x
        x *= NEG_MUL2  # < 2^63
        x = -x
        x &= MASK32
        return x

    def const(self, k: int) -> Any:
        """A word constant usable against arrays: a Python int, or a 0-d array if >= 2^31
        where Python ints are taken as int32."""
        if k < 2**31 or not self.int32_scalars:
            return k
        return self.xp.full((), k, dtype=self.dtype, device=self.device)


def _lowbias32(x: Any, words: _Words | _Host, *, last: bool = True) -> Any:
    """Wellons' lowbias32 on words in [0, 2^32): Python ints or arrays, updated in place.

    8 operations in uint32, 11 in int64; ``last=False`` stops before the final
    ``x ^= x >> 16`` (2 fewer), which leaves the high 16 bits as they will be.
    """
    x ^= x >> 16
    x *= MUL1  # < 2^63 in int64
    x = words.wrap(x)
    x ^= x >> 15
    x = words.times_mul2(x)
    if last:
        x ^= x >> 16
    return x


def _keys(seed: int, step: Any, words: _Words) -> tuple[Any, Any]:
    """(k1, k2): Python ints (or 0-d constants) for a Python step, 0-d device words for
    a device step."""
    host = _Host()
    s1 = _lowbias32(seed, host)
    s2 = _lowbias32(seed ^ SEED_TWEAK, host)
    if isinstance(step, numbers.Integral):  # host value: keys cost no device operation
        k1 = _lowbias32((operator.index(step) & MASK32) ^ s1, host)
        return words.const(k1), words.const(k1 ^ s2)
    xp = words.xp
    if getattr(step, "ndim", None) != 0 or not xp.isdtype(step.dtype, "integral"):
        raise TypeError(f"step: expected a Python int or a 0-d integer array; got {step!r}")
    t = words.wrap(xp.astype(step, words.dtype))  # () word, step mod 2^32 (a new array)
    t ^= words.const(s1)
    k1 = _lowbias32(t, words)  # ()
    return k1, k1 ^ words.const(s2)


def _mixed(seed: int, step: Any, n: int, words: _Words, *, last: bool = True) -> Any:
    """``bits[j]`` for ``j < n``, shape (n,) (``last=False``: before H's final xor-shift)."""
    if not (isinstance(seed, numbers.Integral) and 0 <= seed <= MASK32):
        raise ValueError(f"seed: expected an int in [0, 2**32); got {seed!r}")
    k1, k2 = _keys(operator.index(seed), step, words)
    x = words.xp.arange(n, dtype=words.dtype, device=words.device)  # (n,)
    x ^= k1
    x = _lowbias32(x, words)
    x ^= k2
    return _lowbias32(x, words, last=last)  # (n,)


def _size(shape: tuple[int, ...]) -> int:
    n = math.prod(shape)
    if n > 2**32:
        raise ValueError(f"shape: at most 2**32 elements per call; got {shape}")
    return n


def random_bits(seed: int, step: Any, shape: tuple[int, ...], *, xp: Any, device: Any) -> Any:
    """Random 32-bit words, shape ``shape``, values in [0, 2^32).

    ``step`` is a Python int or a 0-d integer array on ``device`` (taken mod
    2^32); ``seed`` is an int in [0, 2^32). The dtype is uint32, or int64 on
    torch; the values agree.
    """
    shape = tuple(shape)
    words = _Words(xp, device)
    return xp.reshape(_mixed(seed, step, _size(shape), words), shape)


def uniform(
    seed: int, step: Any, shape: tuple[int, ...], *, xp: Any, device: Any, dtype: Any
) -> Any:
    """Uniform floats in [0, 1), shape ``shape``, of ``dtype`` (float32 or float64).

    Each is ``k / 2^24`` for the top 24 bits ``k`` of :func:`random_bits`, so it is
    exact in float32 and identical on every library and device.
    """
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"dtype: expected float32 or float64; got {dtype!r}")
    bits = random_bits(seed, step, shape, xp=xp, device=device)  # (*shape)
    u = xp.astype(bits >> 8, dtype)  # (*shape), a new array
    u *= TWO_POW_M24
    return u


def dropout_mask(
    seed: int, step: Any, shape: tuple[int, ...], p: float, *, xp: Any, device: Any, dtype: Any
) -> Any:
    """Inverted-dropout multipliers, shape ``shape``, of ``dtype``: 0 where dropped,
    ``1 / (1 - p)`` where kept.

    Each word gives two decisions: with ``w = random_bits(seed, step, (ceil(n / 2),))``
    for ``n`` elements, flattened element ``2j`` is kept where the high 16 bits
    of ``w[j]`` are ``>= ceil(p * 2^16)``, element ``2j + 1`` where its low 16
    bits are. So ``p`` is quantised up to a multiple of 2^-16: the effective drop
    probability is ``p' = ceil(p * 2^16) / 2^16``, with ``0 <= p' - p < 2^-16``,
    so the keep rate is off by less than 2^-16 (exact where ``p * 2^16`` is an
    integer, e.g. 0.5 or 0.25); the multiplier stays ``1 / (1 - p)``. Element
    ``i`` depends on ``(seed, step, i)`` only, not on ``shape``.

    ``p`` in [0, 1); ``p == 0`` gives all ones (``p > 1 - 2^-16`` all zeros). Cost
    per call, in array operations, uint32 words: 25 (arange, 2 key xors, 8 + 6 for
    the hash, 4 for the two decisions; stack, reshape, cast, scale), 21 of them on
    ``ceil(n / 2)`` elements and 4 on ``n`` (the reshape a view); 2 more for an
    odd ``n`` (a reshape and a slice); plus 11 on 0-d arrays when
    ``step`` is a device array (cast, xor, 8 for the key hash, xor). int64 words
    (torch): 32, the hashes costing 11 + 9 and the decisions 5; 15 for a device
    step. Where Python ints are taken as int32 (JAX without x64), up to 4 0-d
    constants are created too.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: dropout probability must be in [0, 1); got {p!r}")
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"dtype: expected float32 or float64; got {dtype!r}")
    shape = tuple(shape)
    if p == 0.0:
        return xp.ones(shape, dtype=dtype, device=device)
    n = _size(shape)
    m = (n + 1) // 2
    words = _Words(xp, device)
    # half >= ceil(p 2^16)  <=>  half * 2^16 + (anything below 2^16) > ceil(p 2^16) * 2^16 - 1
    threshold = words.const(math.ceil(p * 2**16) * 2**16 - 1)  # in [2^16 - 1, 2^32): exact
    x = _mixed(seed, step, m, words, last=False)  # (m,): H's final x ^= x >> 16 not done
    high = x > threshold  # (m,) bool: H leaves the high 16 bits as they are here
    x ^= x << 16  # high 16 bits: those of x ^ (x >> 16), the low half of the word
    low = words.wrap(x) > threshold  # (m,) bool
    kept = xp.stack([high, low], axis=-1)  # (m, 2): elements 2j and 2j + 1
    if n % 2:
        kept = xp.reshape(kept, (2 * m,))[:n]  # (n,)
    mask = xp.astype(xp.reshape(kept, shape), dtype)  # (*shape), a new array
    mask *= 1.0 / (1.0 - p)
    return mask
