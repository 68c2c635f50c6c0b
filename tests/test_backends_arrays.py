"""Arrays passed in: ``namespace_of``, ``library_name``, ``device_of``, ``is_array``,
``device_context``. JAX arrays and tracers are in test_backends_jax.py."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from bptt import backends


def test_namespace_of_follows_the_arrays(be) -> None:
    a = be.asarray(np.ones((2, 3), dtype=np.float32))
    b = be.asarray(np.zeros(3, dtype=np.float32))
    xp, device = backends.namespace_of({"a": a, "bias": None, "b": b})
    assert device == be.device == backends.device_of(a)
    assert xp.zeros(2, device=device).device == be.device
    assert backends.library_name(a) == be.name
    assert backends.is_array(a) and not backends.is_traced(a)


def test_namespace_of_names_what_is_not_an_array() -> None:
    with pytest.raises(TypeError, match=r"^targets: expected an array .*; got list$"):
        backends.namespace_of({"inputs": np.ones(2), "targets": [1, 2]})
    with pytest.raises(TypeError, match="expected at least one array"):
        backends.namespace_of({"bias": None})
    assert not backends.is_array([1.0]) and not backends.is_array(1.0)


def test_namespace_of_refuses_two_libraries() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^y is a torch array but x is a numpy array; put all"):
        backends.namespace_of({"x": np.ones(2), "y": torch.ones(2)})


def test_namespace_of_refuses_two_devices() -> None:
    """array_api_strict's device1 and device2 refuse mixing, as two GPUs do."""
    be1 = backends.get_backend("array_api_strict", "device1")
    be2 = backends.get_backend("array_api_strict", "device2")
    x, y = be1.asarray(np.ones(2)), be2.asarray(np.ones(2))
    with pytest.raises(ValueError, match=r"^y is on device .*device2.* but x is on .*device1.*"):
        backends.namespace_of({"x": x, "y": y})
    assert backends.namespace_of({"x": x, "z": be1.asarray(np.ones(1))})[1] == be1.device


def test_library_name_reads_the_type_without_importing() -> None:
    fake = type("ArrayImpl", (), {"__module__": "jaxlib._jax"})()
    assert backends.library_name(fake) == "jax"
    fake = type("ndarray", (), {"__module__": "cupy._core.core"})()
    assert backends.library_name(fake) == "cupy"
    assert backends.library_name(np.ones(1)) == "numpy"


def test_device_context_is_a_no_op_off_cupy_and_jax(be) -> None:
    if be.name in ("cupy", "jax"):
        pytest.skip("a real context there: test_device_current.py, test_backends_jax.py")
    x = be.asarray(np.ones(2, dtype=np.float32))
    assert isinstance(backends.device_context(x), contextlib.nullcontext)
    assert isinstance(be.activate(), contextlib.nullcontext)


def test_device_context_on_jax() -> None:
    jax = pytest.importorskip("jax")
    be = backends.get_backend("jax")
    x = be.asarray(np.ones(2, dtype=np.float32))
    with backends.device_context(x):
        assert jax.config.jax_default_device == x.device
    assert jax.config.jax_default_device is None
