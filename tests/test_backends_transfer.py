"""``Backend.to_numpy_many``: the same arrays as ``to_numpy`` one by one, in one
device-to-host transfer per dtype (checkpoints copy many small arrays)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bptt import backends


def _host_arrays(int_dtype: str, float_dtypes: tuple[str, ...]) -> list[np.ndarray]:
    """Mixed dtypes, 0-d and empty arrays, in an order that interleaves the dtypes."""
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(-5, 5, size=(2, 3)).astype(int_dtype),
        np.asarray(1.5, dtype=float_dtypes[0]),  # 0-d
        rng.standard_normal((4, 1, 2)).astype(float_dtypes[0]),
        np.asarray(7, dtype=int_dtype),  # 0-d
        np.zeros((0, 3), dtype=float_dtypes[0]),  # empty
        rng.standard_normal(5).astype(float_dtypes[-1]),
        np.arange(4, dtype=int_dtype),
    ]
    return arrays


def _check_same_as_one_by_one(be: backends.Backend, host: list[np.ndarray]) -> None:
    arrays = [be.asarray(h, dtype=str(h.dtype)) for h in host]
    calls = []

    def counting(x):
        calls.append(x)
        return be.to_numpy(x)

    counted = dataclasses.replace(be, _to_numpy=counting)
    many = counted.to_numpy_many(arrays)
    assert len(calls) == len({h.dtype for h in host})  # one transfer per dtype
    one_by_one = [be.to_numpy(x) for x in arrays]
    assert len(many) == len(one_by_one) == len(host)
    for got, expected, original in zip(many, one_by_one, host, strict=True):
        assert got.dtype == expected.dtype == original.dtype
        assert got.shape == expected.shape == original.shape
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got, original)
    named = be.to_numpy_many({f"a{i}": x for i, x in enumerate(arrays)})
    assert list(named) == [f"a{i}" for i in range(len(arrays))]
    for got, expected in zip(named.values(), one_by_one, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_to_numpy_many_equals_to_numpy(be) -> None:
    """int64 and float32 on every backend and device (float64 too where it exists)."""
    floats = ("float32", "float64") if be.supports("float64") else ("float32",)
    integers = "int64" if be.supports("int64") else "int32"  # JAX without x64
    _check_same_as_one_by_one(be, _host_arrays(integers, floats))


def test_to_numpy_many_on_jax_without_x64() -> None:
    jax = pytest.importorskip("jax")
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        _check_same_as_one_by_one(backends.get_backend("jax"), _host_arrays("int32", ("float32",)))
    finally:
        jax.config.update("jax_enable_x64", old)


def test_to_numpy_many_on_jax_with_x64() -> None:
    jax = pytest.importorskip("jax")
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        host = _host_arrays("int64", ("float32", "float64"))
        _check_same_as_one_by_one(backends.get_backend("jax"), host)
    finally:
        jax.config.update("jax_enable_x64", old)


def test_to_numpy_many_of_nothing_and_of_one() -> None:
    be = backends.get_backend("numpy")
    assert be.to_numpy_many([]) == [] and be.to_numpy_many({}) == {}
    x = np.arange(3)
    assert be.to_numpy_many([x])[0] is x  # a dtype held by one array is copied directly


def test_to_numpy_many_on_a_device_that_refuses_numpy() -> None:
    """device1 refuses ``np.asarray``: the concatenation must stay on the device."""
    be = backends.get_backend("array_api_strict", "device1")
    host = _host_arrays("int64", ("float32",))
    arrays = [be.asarray(h) for h in host]
    for got, expected in zip(be.to_numpy_many(arrays), host, strict=True):
        np.testing.assert_array_equal(got, expected)
