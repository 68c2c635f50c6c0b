"""The JAX backend: detection, devices, x64 mode, immutability, and arrays under ``jax.jit``.

JAX is optional: every test skips without it. x64 is a process-wide flag; the
fixtures below set it and put the old value back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bptt import backends

jax = pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
jnp = jax.numpy

X64_MESSAGE = (
    "dtype: float64 needs JAX's x64 mode: "
    "set JAX_ENABLE_X64=1 or jax.config.update('jax_enable_x64', True)"
)


def _set_x64(on: bool):
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", on)
    yield
    jax.config.update("jax_enable_x64", old)


@pytest.fixture
def x64_on():
    yield from _set_x64(True)


@pytest.fixture
def x64_off():
    yield from _set_x64(False)


@pytest.fixture
def fresh_jax_status():
    backends._jax_status.cache_clear()
    yield
    backends._jax_status.cache_clear()


# ---- detection -------------------------------------------------------------------------


def test_jax_is_listed_and_usable() -> None:
    status = {s.name: s for s in backends.list_backends()}["jax"]
    assert status.usable and status.reason == ""
    local = tuple(str(d) for d in jax.local_devices())
    assert status.devices[: len(local)] == local  # then the CPU's, when the default is a GPU
    info = backends.describe("jax")
    assert info["usable"] == "yes" and info["version"] == jax.__version__
    assert info["standard version"] == jnp.__array_api_version__


def test_jax_that_cannot_be_imported_has_a_reason(
    monkeypatch: pytest.MonkeyPatch, fresh_jax_status
) -> None:
    monkeypatch.setitem(sys.modules, "jax", None)  # None makes the import fail
    status = {s.name: s for s in backends.list_backends()}["jax"]
    assert not status.usable
    assert status.reason.startswith("cannot import jax: ModuleNotFoundError: import of jax halted")
    assert backends.describe("jax") == {"usable": f"no: {status.reason}"}
    with pytest.raises(backends.BackendError, match="backend 'jax' is not usable here") as info:
        backends.get_backend("jax")
    assert "cannot import jax" in str(info.value) and "'numpy'" in str(info.value)


def test_jax_without_the_array_api_has_a_reason(
    monkeypatch: pytest.MonkeyPatch, fresh_jax_status
) -> None:
    monkeypatch.delattr(jnp, "__array_api_version__")
    status = backends._jax_status()
    assert not status.usable
    assert "predates the array API in jax.numpy (needs >= 0.4.32)" in status.reason


def test_jax_without_a_device_has_a_reason(
    monkeypatch: pytest.MonkeyPatch, fresh_jax_status
) -> None:
    def no_platform(backend=None):
        raise RuntimeError("Unable to initialize backend 'cpu'")

    monkeypatch.setattr(jax, "local_devices", no_platform)
    status = backends._jax_status()
    assert not status.usable
    assert status.reason == "no JAX device (RuntimeError: Unable to initialize backend 'cpu')"


def test_jax_is_imported_only_when_asked() -> None:
    code = (
        "import sys, numpy as np, bptt; from bptt import backends as b;"
        "b.get_backend('numpy'); b.get_backend('torch'); b.backend_of(np.ones(1));"
        "print('jax' in sys.modules);"
        "b.get_backend('jax'); print('jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


# ---- devices ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", [None, "cpu", "CPU", "cpu:0", 0, "0", jax.devices("cpu")[0]])
def test_jax_device_spellings(device) -> None:
    be = backends.get_backend("jax", device)
    assert be.name == "jax" and be.xp is jnp
    assert be.device == jax.devices("cpu")[0]


@pytest.mark.parametrize(
    "device, fragment",
    [
        ("cpu:7", "'cpu:7' does not exist; JAX has ['cpu:0'"),
        (7, "7 does not exist"),
        ("cpu:one", "a JAX device is 'cpu', 'gpu:1', 0"),
        ("quantum", "JAX has no 'quantum' devices here"),
        (-1, "not a JAX device: -1"),
        (True, "not a JAX device: True"),
        (1.0, "not a JAX device: 1.0"),
        ("", "not a JAX device: ''"),
    ],
)
def test_bad_jax_device(device, fragment: str) -> None:
    if jax.default_backend() != "cpu" and isinstance(device, int):
        pytest.skip("an int counts devices of the default platform, not the CPU")
    with pytest.raises(backends.BackendError, match="device: ") as info:
        backends.get_backend("jax", device)
    assert fragment in str(info.value)


def test_no_gpu_is_refused_with_jaxs_reason() -> None:
    if jax.default_backend() == "gpu":
        pytest.skip("JAX has a GPU here")
    with pytest.raises(backends.BackendError, match="JAX has no 'gpu' devices here"):
        backends.get_backend("jax", "gpu")


def test_round_trip_on_jax() -> None:
    be = backends.get_backend("jax")
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    x = be.asarray(host)
    assert x.device == be.device
    again = backends.backend_of(x)
    assert again.name == "jax" and again.device == be.device
    np.testing.assert_array_equal(be.to_numpy(x), host)
    be.synchronize()  # a no-op, documented


def test_activate_makes_the_device_jaxs_default() -> None:
    be = backends.get_backend("jax")
    with be.activate():
        assert jax.config.jax_default_device == be.device
        assert jnp.zeros(1).device == be.device
    assert jax.config.jax_default_device is None


def test_several_devices_in_a_subprocess() -> None:
    """Two CPU devices (JAX_NUM_CPU_DEVICES=2): placement, mixing refused, contexts."""
    code = textwrap.dedent(
        """
        import jax, numpy as np, pytest
        from bptt import backends
        second = jax.devices()[1]
        for spelling in ("cpu:1", 1, "1", second):
            assert backends.get_backend("jax", spelling).device == second, spelling
        be1, be0 = backends.get_backend("jax", 1), backends.get_backend("jax")
        x = be1.asarray(np.arange(3.0))
        assert x.device == second and backends.backend_of(x).device == second
        assert backends.namespace_of({"x": x, "y": x * 2})[1] == second
        with pytest.raises(ValueError, match="y is on device .* but x is on .*; move them"):
            backends.namespace_of({"x": x, "y": be0.asarray(np.ones(3))})
        with be1.activate():
            assert jax.numpy.zeros(1).device == second
        with backends.device_context(x):
            assert jax.numpy.zeros(1).device == second
        def f(a):
            xp, device = backends.namespace_of({"a": a})
            return a + xp.ones(a.shape, device=device)
        y = jax.jit(f)(x)
        assert y.device == second
        host = be1.to_numpy_many([x, y, be1.asarray(np.int32(4))])
        assert [h.tolist() for h in host] == [[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], 4]
        print("ok")
        """
    )
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---- dtypes and x64 mode ---------------------------------------------------------------


def test_float64_refused_without_x64(x64_off) -> None:
    be = backends.get_backend("jax")
    assert be.supports("float32") and be.supports("int32")
    assert not be.supports("float64") and not be.supports("int64")
    with pytest.raises(ValueError) as info:
        be.require_dtype("float64")
    assert str(info.value) == X64_MESSAGE
    with pytest.raises(ValueError, match=r"^dtype: int64 needs JAX's x64 mode"):
        be.asarray(np.arange(3), dtype="int64")
    with pytest.raises(ValueError, match=r"^dtype: float64 needs JAX's x64 mode"):
        be.asarray([1.0], dtype=jnp.float64)  # a dtype object, not only a name
    assert be.asarray([1.0], dtype="float32").dtype == jnp.float32
    assert "off" in backends.describe("jax")["x64"]


def test_float64_accepted_with_x64(x64_on) -> None:
    be = backends.get_backend("jax")
    assert be.supports("float64") and be.supports("int64")
    be.require_dtype("float64")
    x = be.asarray(np.arange(3), dtype="int64")
    assert x.dtype == jnp.int64
    assert be.asarray([1.0], dtype="float64").dtype == jnp.float64
    assert backends.describe("jax")["x64"] == "on"


def test_jax_arrays_are_not_writeable() -> None:
    be = backends.get_backend("jax")
    assert not be.writeable
    x = be.asarray(np.zeros(3, dtype=np.float32))
    with pytest.raises(TypeError, match="immutable"):
        x[0] = 1.0  # what ``writeable`` promises, checked against the library


# ---- arrays and tracers ----------------------------------------------------------------


def test_namespace_of_jax_arrays() -> None:
    a, b = jnp.ones(3), jnp.zeros(2)
    xp, device = backends.namespace_of({"a": a, "b": b, "skipped": None})
    assert xp is jnp and device == a.device
    assert backends.library_name(a) == "jax" and backends.is_array(a)
    with pytest.raises(TypeError, match=r"b is a numpy array but a is a jax array"):
        backends.namespace_of({"a": a, "b": np.ones(3)})


@pytest.mark.parametrize("transform", ["jit", "grad", "vmap"])
def test_namespace_of_tracers(transform: str) -> None:
    """Tracers have no device: the comparison skips them and the device is None."""
    seen = {}
    constant = jnp.full(3, 2.0)  # a concrete array closed over by the traced function

    def f(a, b):
        seen["library"] = backends.library_name(a)
        seen["traced"] = backends.is_traced(a)
        seen["device_of"] = backends.device_of(a)
        xp, device = backends.namespace_of({"a": a, "b": b, "constant": constant})
        seen["xp"], seen["device"] = xp, device
        seen["context"] = type(backends.device_context(a)).__name__
        with pytest.raises(TypeError, match=r"host is a numpy array but a is a jax array"):
            backends.namespace_of({"a": a, "host": np.ones(3)})
        return xp.sum(a * b + xp.zeros(a.shape, device=device) + constant)

    a, b = jnp.arange(3.0), jnp.ones(3)
    if transform == "jit":
        assert float(jax.jit(f)(a, b)) == 9.0
    elif transform == "grad":
        np.testing.assert_array_equal(np.asarray(jax.grad(f)(a, b)), [1.0, 1.0, 1.0])
    else:
        batched = jax.vmap(f)(jnp.stack([a, a]), jnp.stack([b, b]))
        np.testing.assert_array_equal(np.asarray(batched), [9.0, 9.0])
    assert seen == {
        "library": "jax",
        "traced": True,
        "device_of": None,
        "xp": jnp,
        "device": None,
        "context": "nullcontext",
    }


def test_backend_of_a_tracer_has_the_default_device() -> None:
    seen = []
    jax.jit(lambda a: seen.append(backends.backend_of(a)) or a)(jnp.ones(2))
    assert seen[0].name == "jax" and seen[0].device == backends.get_backend("jax").device
