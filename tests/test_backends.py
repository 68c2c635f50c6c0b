"""Backend registry: selection, detection, conversion, and refusing to mix.

JAX-specific cases are in test_backends_jax.py, array lookups (``namespace_of``,
``device_context``) in test_backends_arrays.py, ``to_numpy_many`` in
test_backends_transfer.py.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bptt
from bptt import backends


def test_list_backends_reports_every_name() -> None:
    statuses = backends.list_backends()
    assert [s.name for s in statuses] == list(backends.NAMES)
    for s in statuses:
        assert s.usable == (s.reason == "")
    assert statuses[0].usable  # numpy always


def test_cupy_detection_never_crashes_and_explains() -> None:
    status = backends._cupy_status()
    if not status.usable:
        assert status.reason
        with pytest.raises(backends.BackendError, match="not usable here") as info:
            backends.get_backend("cupy")
        assert status.reason in str(info.value) and "numpy" in str(info.value)
        assert backends.resolve_name("auto") == "numpy"


def test_importing_bptt_imports_no_framework() -> None:
    frameworks = "('torch', 'cupy', 'array_api_strict', 'jax', 'jaxlib')"
    code = (
        "import sys, bptt, numpy as np; from bptt import backends as b;"
        "b.get_backend('numpy'); b.namespace_of({'x': np.ones(2)});"
        "b.device_context(np.ones(2)); b.library_name(np.ones(2));"
        f"print(sorted(m for m in {frameworks} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_environment_variable_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPTT_BACKEND", "torch")
    p = bptt.init_params(3, 2, 3)
    assert type(p["U"]).__module__.startswith("torch")
    assert backends.get_backend("numpy").name == "numpy"  # explicit beats the variable
    monkeypatch.setenv("BPTT_BACKEND", "nonsense")
    with pytest.raises(backends.BackendError, match="nonsense"):
        bptt.init_params(3, 2, 3)


def test_unknown_backend_and_device() -> None:
    with pytest.raises(backends.BackendError, match="expected one of"):
        backends.get_backend("tensorflow")
    with pytest.raises(backends.BackendError, match="device"):
        backends.get_backend("numpy", "cuda:0")
    with pytest.raises(backends.BackendError, match="device1"):
        backends.get_backend("array_api_strict", "device7")


def test_round_trip_and_backend_of(be) -> None:
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    x = be.asarray(host)
    assert x.device == be.device
    again = backends.backend_of(x)
    assert again.name == be.name and again.device == be.device
    np.testing.assert_array_equal(be.to_numpy(x), host)
    be.synchronize()


def test_device1_refuses_numpy_like_a_gpu() -> None:
    """The stand-in is only worth something if it refuses what CuPy refuses."""
    be = backends.get_backend("array_api_strict", "device1")
    x = be.asarray(np.ones(3))
    with pytest.raises(RuntimeError):
        np.asarray(x)
    with pytest.raises(ValueError):
        x + backends.get_backend("array_api_strict").asarray(np.ones(3))


def test_mixing_libraries_is_refused() -> None:
    import torch

    p = bptt.init_params(4, 3, 2, dtype="float64")
    ids = torch.zeros((2, 2), dtype=torch.int64)
    with pytest.raises(
        TypeError, match=r"inputs is a torch array but params\['U'\] is a numpy array"
    ):
        bptt.forward(p, ids)


def test_mixing_devices_is_refused() -> None:
    p = bptt.init_params(4, 3, 2, backend="array_api_strict", device="device1")
    ids = backends.get_backend("array_api_strict").asarray(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"inputs is on device .*CPU_DEVICE.* but params"):
        bptt.forward(p, ids)


def test_float64_refused_where_missing() -> None:
    with pytest.raises(ValueError, match="float64 is not supported"):
        bptt.init_params(4, 3, 2, dtype="float64", backend="array_api_strict", device="no_float64")


def test_describe_every_backend() -> None:
    for status in backends.list_backends():
        info = backends.describe(status.name)
        assert info["usable"].startswith("yes" if status.usable else "no: ")
        if status.usable:
            assert info["version"] and info["devices"]


@pytest.mark.parametrize("require, outcome", [("1", "1 error"), ("", "1 skipped")])
def test_require_gpu_turns_the_skip_into_a_failure(require: str, outcome: str) -> None:
    if backends._cupy_status().usable:
        pytest.skip("a GPU is usable here: the cupy case runs instead")
    test = f"{__file__}::test_round_trip_and_backend_of[cupy]"
    env = {**os.environ, "BPTT_REQUIRE_GPU": require}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert outcome in out.stdout, out.stdout
    assert out.returncode == (1 if require else 0)
    if require:
        assert "BPTT_REQUIRE_GPU=1 but cupy is not usable" in out.stdout


PUBLIC = (
    "NAMES Backend BackendError BackendStatus backend_of describe get_backend list_backends "
    "resolve_name namespace_of library_name device_of is_array device_context"
).split()


def test_public_names_and_the_private_ones_tests_use() -> None:
    for name in PUBLIC:
        assert hasattr(backends, name), name
    assert set(PUBLIC) <= set(backends.__all__)
    for name in ("_cupy_status", "_torch_cuda_status", "_jax_status", "_cupy_device_index"):
        assert callable(getattr(backends, name)), name
    assert "jax" in backends.NAMES


def test_backends_knows_nothing_of_the_rest_of_bptt() -> None:
    """The device layer stands alone: no import of bptt (``bptt._array_api`` included)."""
    folder = Path(backends.__file__).parent
    assert len(list(folder.glob("*.py"))) > 5  # split into single-purpose modules
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name}: from {'.' * node.level}{node.module}"
                assert not (node.module or "").startswith("bptt"), f"{path.name}: {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("bptt") for a in node.names), path.name
        assert "_array_api" not in path.read_text().replace("array_api_", ""), path.name


def test_auto_never_picks_torch_or_jax() -> None:
    """A design decision: auto is CuPy when usable, else NumPy, whatever else is installed."""
    expected = "cupy" if backends._cupy_status().usable else "numpy"
    assert backends.resolve_name("auto") == expected
    assert backends.resolve_name(" AUTO ") == expected


def test_writeable_is_decided_by_the_library() -> None:
    numpy_be = backends.get_backend("numpy")
    assert numpy_be.writeable
    for name in ("cupy", "torch", "array_api_strict"):
        assert dataclasses.replace(numpy_be, name=name).writeable, name
    assert not dataclasses.replace(numpy_be, name="jax").writeable


def test_writeable_matches_what_the_arrays_allow(be) -> None:
    if be.name == "jax":
        pytest.skip("JAX arrays are immutable: see test_backends_jax.py")
    x = be.asarray(np.zeros(3, dtype=np.float32))
    assert be.writeable
    x[0] = 1.0  # no error: the library allows it
    np.testing.assert_array_equal(be.to_numpy(x), [1.0, 0.0, 0.0])


def test_require_dtype_names_the_argument() -> None:
    backends.get_backend("numpy").require_dtype("float64")  # available: no error
    be = backends.get_backend("array_api_strict", "no_float64")
    with pytest.raises(ValueError, match=r"^--dtype: float64 is not supported on array_api_strict"):
        be.require_dtype("float64", "--dtype")
    with pytest.raises(ValueError, match=r"^dtype: .*use 'float32'$"):
        be.require_dtype("float64")
    with pytest.raises(ValueError, match=r"^dtype: int64 is not supported .*'no_x64'.*\)$"):
        backends.get_backend("array_api_strict", "no_x64").require_dtype("int64")


def test_device2_is_a_second_device() -> None:
    be1 = backends.get_backend("array_api_strict", "device1")
    be2 = backends.get_backend("array_api_strict", "device2")
    x = be2.asarray(np.arange(3.0))
    assert x.device == be2.device != be1.device
    assert backends.backend_of(x).device == be2.device
    np.testing.assert_array_equal(be2.to_numpy(x), [0.0, 1.0, 2.0])
    with pytest.raises(ValueError):
        x + be1.asarray(np.ones(3))
