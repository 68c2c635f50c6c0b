"""bptt.numerics.random: the same bits on every library and device, sound statistics,
no host synchronisation, and a small, known number of array operations."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import array_api_compat.numpy as xnp
import numpy as np
import pytest

from bptt import backends
from bptt.numerics.random import dropout_mask, random_bits, uniform

# (seed, step, shape): odd sizes, a 0-d shape, steps past 2^31 (negative as int32)
CASES = [
    (0, 0, (8,)),
    (1, 1, (3, 5)),
    (1234, 99, (7, 11, 13)),
    (2**32 - 1, 2**31 + 5, (1,)),
    (42, 2**32 - 1, ()),
]
# seed 0, step 0: the first 8 uniforms times 2^24, computed once with the reference below
PINNED_TOP24 = [3745236, 2302722, 11668238, 2707185, 4683919, 10607366, 5494428, 8773584]
# seed 0, step 0, p = 0.3: the first 24 keep decisions of dropout_mask, computed once
PINNED_KEEP = "010010010110111101101110"
N_STATS = 10**6


def lowbias32(x: np.ndarray) -> np.ndarray:
    """Wellons' lowbias32 in native uint32 arithmetic: a reference independent of the
    module's int64 formulation (which multiplies by the negated second constant)."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def reference_bits(seed: int, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """H(H(i ^ k1) ^ k2), k1 = H(step ^ H(seed)), k2 = k1 ^ H(seed ^ 0x5bd1e995); int64."""

    def h(v: int) -> int:
        return int(lowbias32(np.array([v]))[0])

    k1 = h((step % 2**32) ^ h(seed))
    k2 = k1 ^ h(seed ^ 0x5BD1E995)
    i = np.arange(math.prod(shape), dtype=np.uint32)
    return lowbias32(lowbias32(i ^ np.uint32(k1)) ^ np.uint32(k2)).astype(np.int64).reshape(shape)


def reference_keep(seed: int, step: int, shape: tuple[int, ...], p: float) -> np.ndarray:
    """Dropout's keep decisions: element 2j from the high 16 bits of word j, 2j + 1 from
    its low 16 bits, kept where that half is >= ceil(p 2^16); bool, ``shape``."""
    n = math.prod(shape)
    w = reference_bits(seed, step, ((n + 1) // 2,))  # (m,)
    halves = np.stack([w >> 16, w & 0xFFFF], axis=-1).reshape(-1)[:n]  # (n,)
    return (halves >= math.ceil(p * 2**16)).reshape(shape)


def device_step(xp: Any, device: Any, step: int) -> Any:
    """``step`` as a 0-d array of the library's default integer (int32 wraps past 2^31)."""
    int_dtype = xp.__array_namespace_info__().default_dtypes(device=device)["integral"]
    if int_dtype == xp.int32 and step >= 2**31:
        step -= 2**32
    return xp.asarray(step, dtype=int_dtype, device=device)


def check_against_reference(xp: Any, device: Any, to_numpy: Any, case: tuple, *, on_device: bool):
    seed, step, shape = case
    ref = reference_bits(seed, step, shape)  # (*shape) int64
    s = device_step(xp, device, step) if on_device else step
    bits = to_numpy(random_bits(seed, s, shape, xp=xp, device=device))
    assert bits.shape == shape
    np.testing.assert_array_equal(bits.astype(np.int64), ref)
    u = to_numpy(uniform(seed, s, shape, xp=xp, device=device, dtype=xp.float32))
    assert u.dtype == np.float32
    np.testing.assert_array_equal(u, (ref >> 8) * 2.0**-24)
    for p in (0.3, 0.9):  # thresholds below and above 2^31
        mask = to_numpy(dropout_mask(seed, s, shape, p, xp=xp, device=device, dtype=xp.float32))
        assert mask.shape == shape
        keep = reference_keep(seed, step, shape, p)
        np.testing.assert_array_equal(mask, np.where(keep, np.float32(1 / (1 - p)), np.float32(0)))


def test_pinned_first_uniforms() -> None:
    """Fails if a constant of the hash or the key schedule changes."""
    u = uniform(0, 0, (8,), xp=xnp, device=None, dtype=xnp.float64)
    assert [float(v) * 2**24 for v in u] == PINNED_TOP24
    assert list(reference_bits(0, 0, (8,)) >> 8) == PINNED_TOP24


def test_pinned_first_keep_decisions() -> None:
    """Fails if the split of a word into two decisions, or the threshold, changes."""
    mask = dropout_mask(0, 0, (24,), 0.3, xp=xnp, device=None, dtype=xnp.float32)
    assert "".join("1" if v else "0" for v in mask) == PINNED_KEEP
    assert "".join("1" if v else "0" for v in reference_keep(0, 0, (24,), 0.3)) == PINNED_KEEP


def test_word_dtype() -> None:
    """uint32 words wherever uint32 is complete; int64 on torch (no uint32 >> on its CPU)."""
    bits = random_bits(0, 0, (3,), xp=xnp, device=None)
    assert bits.dtype == np.uint32
    assert random_bits(0, 0, (3,), xp=strict(), device=None).dtype == strict().uint32
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xtorch

    assert random_bits(0, 0, (3,), xp=xtorch, device="cpu").dtype == torch.int64


@pytest.mark.parametrize("on_device", [False, True], ids=["int-step", "device-step"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_same_bits_everywhere(be: backends.Backend, case: tuple, on_device: bool) -> None:
    check_against_reference(be.xp, be.device, be.to_numpy, case, on_device=on_device)


def test_device_step_mod_2_32_and_left_as_is(be: backends.Backend) -> None:
    """Words are updated in place, but only those the generator created: never the step."""
    xp, device = be.xp, be.device
    int_dtype = xp.__array_namespace_info__().default_dtypes(device=device)["integral"]
    value = 2**33 + 5 if int_dtype == xp.int64 else -7  # both change under & or ^
    step = xp.asarray(value, dtype=int_dtype, device=device)
    bits = be.to_numpy(random_bits(1, step, (5,), xp=xp, device=device))
    np.testing.assert_array_equal(bits.astype(np.int64), reference_bits(1, value, (5,)))
    mask = be.to_numpy(dropout_mask(1, step, (5,), 0.5, xp=xp, device=device, dtype=xp.float32))
    np.testing.assert_array_equal(mask, reference_keep(1, value, (5,), 0.5) * np.float32(2))
    uniform(1, step, (5,), xp=xp, device=device, dtype=xp.float32)
    assert int(be.to_numpy(step)) == value


def test_float64_uniforms(be64: backends.Backend) -> None:
    ref = reference_bits(5, 6, (4, 9))
    u = be64.to_numpy(uniform(5, 6, (4, 9), xp=be64.xp, device=be64.device, dtype=be64.xp.float64))
    assert u.dtype == np.float64
    np.testing.assert_array_equal(u, (ref >> 8) * 2.0**-24)


# ---- JAX, with and without x64 (uint32 words without it) -----------------------------------


@pytest.fixture(params=[False, True], ids=["x32", "x64"])
def jax_x64(request: pytest.FixtureRequest) -> Iterator[Any]:
    jax = pytest.importorskip("jax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", request.param)
    yield jax
    jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("on_device", [False, True], ids=["int-step", "device-step"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_jax_same_bits(jax_x64: Any, case: tuple, on_device: bool) -> None:
    jnp = jax_x64.numpy
    check_against_reference(jnp, None, np.asarray, case, on_device=on_device)


def test_jax_jit_with_traced_step(jax_x64: Any) -> None:
    jnp = jax_x64.numpy
    seed, shape = 2, (17, 3)  # seed 2: both seed keys >= 2^31, 0-d constants without x64

    @functools.partial(jax_x64.jit, static_argnums=1)
    def mask_at(step: Any, p: float) -> Any:
        return dropout_mask(seed, step, shape, p, xp=jnp, device=None, dtype=jnp.float32)

    for step in (0, 1, 2**31 + 3):
        for p in (0.5, 0.75 + 2**-20):  # thresholds below and above 2^31
            eager = dropout_mask(seed, step, shape, p, xp=jnp, device=None, dtype=jnp.float32)
            traced = mask_at(device_step(jnp, None, step), p)
            np.testing.assert_array_equal(np.asarray(traced), np.asarray(eager))
            ref = reference_keep(seed, step, shape, p)
            np.testing.assert_array_equal(np.asarray(traced), ref * np.float32(1 / (1 - p)))


# ---- statistics (NumPy; the bits are the same everywhere) ----------------------------------


def uniforms(seed: int, step: int, n: int = N_STATS) -> np.ndarray:
    return uniform(seed, step, (n,), xp=xnp, device=None, dtype=xnp.float64)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_mean_multiplier(p: float) -> None:
    mask = dropout_mask(3, 17, (N_STATS,), p, xp=xnp, device=None, dtype=xnp.float64)
    kept = mask > 0
    assert set(np.unique(mask)) == {0.0, 1 / (1 - p)}
    assert abs(kept.mean() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / N_STATS)
    assert abs(mask.mean() - 1) < 5 * math.sqrt(p / (1 - p) / N_STATS)
    for half in (kept[0::2], kept[1::2]):  # the high and the low 16 bits of the words
        assert abs(half.mean() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / half.size)


def test_both_halves_uniform_and_independent() -> None:
    """The 16-bit halves of the words (elements 2j and 2j + 1 of a mask) are uniform,
    and neighbouring decisions (within a word and across words) are independent."""
    n, p = N_STATS, 0.5
    kept = dropout_mask(11, 5, (n,), p, xp=xnp, device=None, dtype=xnp.float32) > 0
    w = random_bits(11, 5, (n // 2,), xp=xnp, device=None).astype(np.int64)
    np.testing.assert_array_equal(kept[0::2], w >> 16 >= 2**15)
    np.testing.assert_array_equal(kept[1::2], w & 0xFFFF >= 2**15)
    for half in (w >> 16, w & 0xFFFF):
        for byte in (half >> 8, half & 255):
            counts = np.bincount(byte, minlength=256)
            expected = half.size / 256
            chi2 = ((counts - expected) ** 2 / expected).sum()  # 255 dof: mean 255, sd 22.6
            assert 255 - 5 * 22.6 < chi2 < 255 + 5 * 22.6
    bound = 5 / math.sqrt(n / 2)
    k = kept.astype(np.float64)
    assert abs(np.corrcoef(k[0::2], k[1::2])[0, 1]) < bound  # the two halves of a word
    assert abs(np.corrcoef(k[1:-1:2], k[2::2])[0, 1]) < bound  # neighbouring words
    assert abs(np.corrcoef(w >> 16, w & 0xFFFF)[0, 1]) < bound


def test_p_quantised_to_sixteen_bits() -> None:
    """p acts as ceil(p 2^16) / 2^16: a threshold on the 16-bit halves."""
    shape = (999,)
    for p in (0.25, 0.25 + 2**-17, 0.25 + 2**-16, 0.3, 1 - 2**-16):
        got = dropout_mask(4, 8, shape, p, xp=xnp, device=None, dtype=xnp.float32) > 0
        np.testing.assert_array_equal(got, reference_keep(4, 8, shape, p))
    a = dropout_mask(4, 8, shape, 0.25 + 2**-17, xp=xnp, device=None, dtype=xnp.float64)
    b = dropout_mask(4, 8, shape, 0.25 + 2**-16, xp=xnp, device=None, dtype=xnp.float64)
    np.testing.assert_array_equal(a > 0, b > 0)  # the same effective p


@pytest.mark.parametrize("n", [0, 1, 2, 7, 64, 101])
def test_element_depends_on_its_index_only(n: int) -> None:
    """Element i of a mask is a function of (seed, step, i): odd and even sizes and any
    shape of the same elements agree on their common prefix."""
    long = dropout_mask(9, 3, (128,), 0.4, xp=xnp, device=None, dtype=xnp.float32)
    short = dropout_mask(9, 3, (n,), 0.4, xp=xnp, device=None, dtype=xnp.float32)
    np.testing.assert_array_equal(short, long[:n])
    if n == 64:
        square = dropout_mask(9, 3, (4, 2, 8), 0.4, xp=xnp, device=None, dtype=xnp.float32)
        np.testing.assert_array_equal(square.reshape(-1), short)


@pytest.mark.parametrize(("seed", "step"), [(0, 0), (12345, 2**31 + 7)])
def test_uniform_moments_and_chi_square(seed: int, step: int) -> None:
    u = uniforms(seed, step)
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / N_STATS)
    second = ((u - 0.5) ** 2).mean()  # var((u - 1/2)^2) = 1/80 - 1/144 = 1/180
    assert abs(second - 1 / 12) < 5 * math.sqrt(1 / 180 / N_STATS)
    k = (u * 2**24).astype(np.int64)
    for byte in (k >> 16, k & 255):  # the top and the lowest 8 of the 24 bits
        counts = np.bincount(byte, minlength=256)
        expected = N_STATS / 256
        chi2 = ((counts - expected) ** 2 / expected).sum()  # 255 dof: mean 255, sd 22.6
        assert 255 - 5 * 22.6 < chi2 < 255 + 5 * 22.6


def test_neighbours_steps_and_seeds_uncorrelated() -> None:
    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1])

    u = uniforms(7, 100)
    bound = 5 / math.sqrt(N_STATS)
    assert abs(corr(u[:-1], u[1:])) < bound  # neighbouring elements
    assert abs(corr(u, uniforms(7, 101))) < bound  # consecutive steps
    assert abs(corr(u, uniforms(8, 100))) < bound  # neighbouring seeds


def test_streams_are_not_shifted_copies() -> None:
    """A one-round hash H(i ^ k) would give every step the same words reordered."""
    n = 2**16  # two random sets of n words in 2^32 share about n^2 / 2^32 = 1
    a = reference_bits(7, 100, (n,))
    for seed, step in ((7, 101), (8, 100)):
        shared = np.intersect1d(a, random_bits(seed, step, (n,), xp=xnp, device=None))
        assert shared.size < 12


# ---- devices, host synchronisation, operation count, errors ------------------------------


def strict() -> Any:
    return backends.get_backend("array_api_strict").xp


def test_stays_on_the_requested_device() -> None:
    xp = strict()
    dev1, dev2 = xp.Device("device1"), xp.Device("device2")
    for dev in (dev1, dev2):
        step = xp.asarray(4, dtype=xp.int64, device=dev)
        assert dropout_mask(1, step, (3, 4), 0.5, xp=xp, device=dev, dtype=xp.float32).device == dev
        assert uniform(1, 4, (3, 4), xp=xp, device=dev, dtype=xp.float32).device == dev
    with pytest.raises(ValueError, match="device"):  # a step on another device is not moved
        random_bits(1, xp.asarray(4, device=dev1), (3,), xp=xp, device=dev2)


def forbid_host_values(monkeypatch: pytest.MonkeyPatch, array_type: type) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an array was converted to a host value")

    for name in ("__bool__", "__float__", "__int__", "__index__", "__complex__", "__array__"):
        monkeypatch.setattr(array_type, name, forbidden)


def test_no_host_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    xp = strict()
    dev = xp.Device("device1")
    step = xp.asarray(2**31 + 9, dtype=xp.int64, device=dev)
    forbid_host_values(monkeypatch, type(step))
    with pytest.raises(AssertionError, match="host value"):
        bool(step)
    mask = dropout_mask(5, step, (6, 7), 0.25, xp=xp, device=dev, dtype=xp.float32)
    u = uniform(5, step, (6, 7), xp=xp, device=dev, dtype=xp.float32)
    bits = random_bits(5, step, (21,), xp=xp, device=dev)  # the words of the mask's 42
    monkeypatch.undo()
    cpu = xp.Device("CPU_DEVICE")
    np.testing.assert_array_equal(
        np.asarray(bits.to_device(cpu)), reference_bits(5, 2**31 + 9, (21,))
    )
    ref_u = (reference_bits(5, 2**31 + 9, (6, 7)) >> 8) * 2.0**-24
    np.testing.assert_array_equal(np.asarray(u.to_device(cpu)), ref_u)
    keep = reference_keep(5, 2**31 + 9, (6, 7), 0.25)
    np.testing.assert_array_equal(keep / np.float32(0.75), np.asarray(mask.to_device(cpu)))


# every operator and namespace function the generator could call, in-place forms included
BINARY = ("xor", "and", "or", "rshift", "lshift", "mul", "add", "sub")
OPERATORS = (
    *(f"__{prefix}{name}__" for name in BINARY for prefix in ("", "r", "i")),
    *("__neg__", "__gt__", "__ge__", "__lt__", "__le__", "__eq__", "__getitem__"),
)
FUNCTIONS = ("arange", "reshape", "astype", "full", "ones", "zeros", "stack", "concat", "where")
FUNCTIONS += ("asarray", "broadcast_to", "expand_dims", "bitwise_xor", "multiply")


def count_ops(monkeypatch: pytest.MonkeyPatch, xp: Any, array_type: type) -> Counter:
    ops: Counter = Counter()

    def counting(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ops[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for name in OPERATORS:
        counting(array_type, name)
    for name in FUNCTIONS:
        counting(xp, name)
    return ops


def test_operation_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """As stated in dropout_mask's docstring (uint32 words): 25 per call, 2 more for an
    odd number of elements, 11 more for a device step."""
    xp = strict()
    step = xp.asarray(3, dtype=xp.int64)
    ops = count_ops(monkeypatch, xp, type(step))
    dropout_mask(1, 3, (5, 6), 0.5, xp=xp, device=None, dtype=xp.float32)
    # the full hash: 3 xor-shifts (>>, ^=) and 2 products; the second one stops before
    # its last xor-shift; the decisions: x > t, x ^= x << 16, x > t
    assert ops == Counter(
        arange=1,
        __ixor__=2 + (3 + 2) + 1,  # key xors, hashes' xor-shifts, x ^= x << 16
        __rshift__=3 + 2,
        __imul__=(2 + 2) + 1,  # hashes' products, the scale
        __lshift__=1,
        __gt__=2,
        stack=1,
        reshape=1,
        astype=1,
    )
    assert sum(ops.values()) == 25
    ops.clear()
    dropout_mask(1, 3, (5, 7), 0.5, xp=xp, device=None, dtype=xp.float32)
    assert sum(ops.values()) == 25 + 2
    ops.clear()
    dropout_mask(1, step, (5, 6), 0.5, xp=xp, device=None, dtype=xp.float32)
    assert sum(ops.values()) == 25 + 11


def test_operation_count_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """int64 words on torch: 32 per call (11 + 9 for the hashes, 5 for the decisions),
    2 more for an odd number of elements, 15 more for a device step."""
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xtorch

    step = xtorch.asarray(3, device="cpu")
    ops = count_ops(monkeypatch, xtorch, torch.Tensor)
    dropout_mask(1, 3, (5, 6), 0.5, xp=xtorch, device="cpu", dtype=xtorch.float32)
    assert sum(ops.values()) == 32
    ops.clear()
    dropout_mask(1, 3, (5, 7), 0.5, xp=xtorch, device="cpu", dtype=xtorch.float32)
    assert sum(ops.values()) == 32 + 2
    ops.clear()
    dropout_mask(1, step, (5, 6), 0.5, xp=xtorch, device="cpu", dtype=xtorch.float32)
    assert sum(ops.values()) == 32 + 15


def test_p_zero_and_p_near_one() -> None:
    ones = dropout_mask(1, 2, (3, 4), 0.0, xp=xnp, device=None, dtype=xnp.float32)
    np.testing.assert_array_equal(ones, np.ones((3, 4), np.float32))
    none_kept = dropout_mask(1, 2, (1000,), 1 - 2**-17, xp=xnp, device=None, dtype=xnp.float64)
    assert not none_kept.any()  # p' = ceil(p 2^16) / 2^16 = 1: no 16-bit half reaches 2^16


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_p(p: float) -> None:
    with pytest.raises(ValueError, match=r"^p: "):
        dropout_mask(0, 0, (2,), p, xp=xnp, device=None, dtype=xnp.float32)


def test_bad_seed_and_step() -> None:
    with pytest.raises(ValueError, match=r"^seed: "):
        random_bits(-1, 0, (2,), xp=xnp, device=None)
    with pytest.raises(ValueError, match=r"^seed: "):
        random_bits(2**32, 0, (2,), xp=xnp, device=None)
    for step in (xnp.asarray([1, 2]), xnp.asarray(1.0)):
        with pytest.raises(TypeError, match=r"^step: "):
            random_bits(0, step, (2,), xp=xnp, device=None)
