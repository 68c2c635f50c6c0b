"""CuPy detection on every path a machine can take, with a stand-in ``cupy`` module.

CuPy 14 imports without a GPU; then the device count raises CUDARuntimeError,
or the count is 0, or a kernel fails to compile. Each must end in a clear
reason, never a crash or a hang, and only a GPU that runs a kernel is usable.
"""

from __future__ import annotations

import sys
import types

import pytest

from bptt import backends


class CUDARuntimeError(RuntimeError):
    pass


def fake_cupy(
    *, count=1, count_error=None, kernel_error=None, kernel_result=12
) -> types.ModuleType:
    cupy = types.ModuleType("cupy")

    def get_device_count() -> int:
        if count_error:
            raise count_error
        return count

    class Array:
        def __init__(self, value):
            self.value = value

        def __mul__(self, k):
            return Array(self.value * k)

        def sum(self):
            if kernel_error:
                raise kernel_error
            return kernel_result

    runtime = types.SimpleNamespace(
        getDeviceCount=get_device_count,
        getDeviceProperties=lambda i: {"name": b"Fake GPU", "totalGlobalMem": 8 << 30},
        runtimeGetVersion=lambda: 12080,
        driverGetVersion=lambda: 13000,
    )
    cupy.cuda = types.SimpleNamespace(runtime=runtime)
    cupy.__version__ = "14.2.0"
    pool = types.SimpleNamespace(used_bytes=lambda: 3 << 20, total_bytes=lambda: 4 << 20)
    cupy.get_default_memory_pool = lambda: pool
    cupy.arange = lambda n: Array(sum(range(n)))
    return cupy


@pytest.fixture
def with_cupy(monkeypatch: pytest.MonkeyPatch):
    def install(module: types.ModuleType | None) -> backends.BackendStatus:
        monkeypatch.setitem(sys.modules, "cupy", module)  # None makes the import fail
        backends._cupy_status.cache_clear()
        return backends._cupy_status()

    yield install
    backends._cupy_status.cache_clear()


@pytest.mark.parametrize(
    "module, fragment",
    [
        (None, "cannot import cupy"),
        (
            fake_cupy(count_error=CUDARuntimeError("cudaErrorInsufficientDriver")),
            "no CUDA device (CUDARuntimeError: cudaErrorInsufficientDriver)",
        ),
        (fake_cupy(count=0), "device count is 0"),
        (
            fake_cupy(kernel_error=RuntimeError("nvrtc: cannot open libnvrtc")),
            "a test kernel failed: RuntimeError: nvrtc",
        ),
        (fake_cupy(kernel_result=7), "wrong result"),
    ],
    ids=["not-installed", "no-driver", "no-device", "no-compiler", "wrong-result"],
)
def test_unusable_gpu_has_a_reason(with_cupy, module, fragment: str) -> None:
    status = with_cupy(module)
    assert not status.usable
    assert fragment in status.reason
    assert backends.resolve_name("auto") == "numpy"
    assert backends.describe("cupy") == {"usable": f"no: {status.reason}"}
    with pytest.raises(backends.BackendError, match="backend 'cupy' is not usable here") as info:
        backends.get_backend("cupy")
    assert fragment in str(info.value) and "'numpy'" in str(info.value)


def test_usable_gpu_is_chosen_by_auto(with_cupy) -> None:
    status = with_cupy(fake_cupy(count=2))
    assert status.usable and status.reason == ""
    assert status.devices == ("cuda:0 Fake GPU", "cuda:1 Fake GPU")
    assert backends.resolve_name("auto") == "cupy"
    info = backends.describe("cupy")
    assert info["CUDA runtime"] == "12.8" and info["CUDA driver"] == "13.0"
    assert info["cuda:1"] == "Fake GPU, 8.0 GiB"
    assert info["memory pool"].endswith("3.0 MiB used, 4.0 MiB held")


@pytest.mark.parametrize(
    "device, index", [(None, 0), (0, 0), (1, 1), ("1", 1), ("cuda:1", 1), ("cuda", 0)]
)
def test_cuda_device_spellings(device, index: int) -> None:
    assert backends._cupy_device_index(device) == index


def test_bad_cuda_device_spelling() -> None:
    with pytest.raises(backends.BackendError, match="a CUDA device is 0, 1, 'cuda:1'"):
        backends._cupy_device_index("gpu-one")


def test_a_numpy_run_never_imports_cupy_nor_shows_its_warnings(tmp_path) -> None:
    """CuPy installed, no GPU: ``--backend auto`` (a NumPy run) finds no device node and
    never imports cupy, whose import may load NCCL and warn on every rank; with a device
    node its import warnings are silenced all the same."""
    import os
    import subprocess
    from pathlib import Path

    from train_helpers import SMALL_TEXT

    fake = tmp_path / "site" / "cupy"
    fake.mkdir(parents=True)
    marker = tmp_path / "cupy-imported"
    fake.joinpath("__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import warnings\n"
        "warnings.warn('CuPy failed to load libnccl.so.2: NCCL is unavailable')\n"
        "raise ImportError('no CUDA here')\n"
    )
    (tmp_path / "text.txt").write_text(SMALL_TEXT, encoding="utf-8")
    path = os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-m", "bptt", "train", "--text", "text.txt", "--backend", "auto",
         "--hidden", "8", "--batch", "4", "--seq-len", "16", "--steps", "2", "--no-progress",
         "--checkpoint-dir", "run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "backend numpy" in done.stdout
    assert "NCCL" not in done.stderr and "Warning" not in done.stderr, done.stderr
    gpu_nodes = list(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/dxg").exists()
    if sys.platform.startswith("linux") and not gpu_nodes:
        assert not marker.exists()  # cupy was never imported
