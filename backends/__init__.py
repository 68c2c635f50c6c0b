"""Backend selection: a name and a device in, an array namespace out.

Installed as ``bptt.backends``. Lazy: no array library is imported until it is
asked for, and probing CuPy never crashes or hangs on a machine without a GPU.

>>> from bptt import backends
>>> be = backends.get_backend("numpy")
>>> x = be.asarray([1.0, 2.0], dtype="float64")
>>> be.to_numpy(x).sum()
np.float64(3.0)

Choice order for functions that create arrays (``init_params``, the CLI): an
explicit ``backend=``/``device=`` argument, else the ``BPTT_BACKEND``
environment variable, else ``"numpy"``. Functions that take arrays follow the
arrays and never move them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "NAMES",
    "Backend",
    "BackendError",
    "BackendStatus",
    "backend_of",
    "describe",
    "get_backend",
    "list_backends",
    "resolve_name",
]

NAMES = ("numpy", "cupy", "torch", "array_api_strict")
ENV_VAR = "BPTT_BACKEND"


class BackendError(ValueError):
    """An unknown backend or device, or one that is not usable on this machine."""


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend is usable here, and if not, why."""

    name: str
    usable: bool
    reason: str  # "" when usable
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backend:
    """An array namespace bound to one device.

    ``xp`` is array-API compatible (array_api_compat's wrapper where the library
    needs one); ``device`` is what new arrays are created on.
    """

    name: str
    xp: Any
    device: Any
    _to_numpy: Callable[[Any], np.ndarray]
    _synchronize: Callable[[Any], None]

    def asarray(self, x: Any, *, dtype: Any = None) -> Any:
        """Host data (NumPy array, list, scalar) to an array on this backend's device."""
        if isinstance(dtype, str):
            dtype = getattr(self.xp, dtype)
        return self.xp.asarray(x, dtype=dtype, device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        """The one place where device data becomes host NumPy data."""
        return self._to_numpy(x)

    def synchronize(self) -> None:
        """Block until queued device work is done (a no-op on the CPU)."""
        self._synchronize(self.device)

    def activate(self) -> contextlib.AbstractContextManager[Any]:
        """Make this device the current one while the block runs.

        CuPy launches kernels on the *current* device, so work on ``cuda:1`` must run
        inside ``with cupy.cuda.Device(1):``; nothing then touches GPU 0. Other
        libraries follow the arrays' own device: a no-op for them.
        """
        if self.name == "cupy":
            return self.device  # cupy.cuda.Device is a context manager
        return contextlib.nullcontext()

    def supports(self, dtype: str) -> bool:
        """True when ``dtype`` (e.g. ``"float64"``) exists on this device."""
        info = getattr(self.xp, "__array_namespace_info__", None)
        if info is None:
            return hasattr(self.xp, dtype)
        try:
            return dtype in info().dtypes(device=self.device)
        except Exception:  # older or partial info objects
            return hasattr(self.xp, dtype)


def _no_sync(device: Any) -> None:
    return None


# ---- per-library loaders: (device argument) -> Backend ---------------------------------


def _load_numpy(device: Any) -> Backend:
    if device not in (None, "cpu"):
        raise BackendError(f"device: numpy runs on 'cpu' only; got {device!r}")
    xp = importlib.import_module("array_api_compat.numpy")
    return Backend("numpy", xp, "cpu", np.asarray, _no_sync)


def _load_array_api_strict(device: Any) -> Backend:
    xp = importlib.import_module("array_api_strict")
    cpu = xp.Device("CPU_DEVICE")
    if device is None:
        device = cpu
    elif isinstance(device, str):
        names = [d._device for d in xp.__array_namespace_info__().devices()]
        if device not in names:
            raise BackendError(f"device: array_api_strict has devices {names}; got {device!r}")
        device = xp.Device(device)

    def to_numpy(x: Any) -> np.ndarray:
        return np.asarray(x.to_device(cpu))

    return Backend("array_api_strict", xp, device, to_numpy, _no_sync)


def _torch_device(torch: Any, device: Any) -> Any:
    if device is None:
        return torch.device("cpu")
    if isinstance(device, int):
        return torch.device("cuda", device)
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise BackendError(f"device: not a torch device: {device!r} ({e})") from None


def _load_torch(device: Any) -> Backend:
    torch = importlib.import_module("torch")
    xp = importlib.import_module("array_api_compat.torch")
    dev = _torch_device(torch, device)
    if dev.type == "cuda":
        status = _torch_cuda_status()
        if not status.usable:
            raise BackendError(f"device: torch CUDA is not usable here: {status.reason}")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise BackendError(f"device: {dev} does not exist; {status.devices}")

    def to_numpy(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    def sync(d: Any) -> None:
        if d.type == "cuda":
            torch.cuda.synchronize(d)

    return Backend("torch", xp, dev, to_numpy, sync)


def _cupy_device_index(device: Any) -> int:
    if device is None:
        return 0
    if isinstance(device, int):
        return device
    if hasattr(device, "id"):  # cupy.cuda.Device
        return int(device.id)
    text = str(device).removeprefix("cuda").removeprefix(":")
    if text == "":
        return 0
    if text.isdigit():
        return int(text)
    raise BackendError(f"device: a CUDA device is 0, 1, 'cuda:1' ...; got {device!r}")


def _load_cupy(device: Any) -> Backend:
    status = _cupy_status()
    if not status.usable:
        usable = [s.name for s in list_backends() if s.usable]
        raise BackendError(f"backend 'cupy' is not usable here: {status.reason}. Usable: {usable}")
    cupy = importlib.import_module("cupy")
    xp = importlib.import_module("array_api_compat.cupy")
    index = _cupy_device_index(device)
    if index >= len(status.devices):
        raise BackendError(f"device: CUDA device {index} does not exist; {status.devices}")
    dev = cupy.cuda.Device(index)

    def to_numpy(x: Any) -> np.ndarray:
        return x.get()

    def sync(d: Any) -> None:
        d.synchronize()

    return Backend("cupy", xp, dev, to_numpy, sync)


_LOADERS: dict[str, Callable[[Any], Backend]] = {
    "numpy": _load_numpy,
    "cupy": _load_cupy,
    "torch": _load_torch,
    "array_api_strict": _load_array_api_strict,
}


# ---- usability probes (cached; never raise) -------------------------------------------


def _importable(module: str) -> str:
    try:
        importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install raising anything
        return f"cannot import {module}: {type(e).__name__}: {e}"
    return ""


@functools.cache
def _cupy_status() -> BackendStatus:
    """A usable GPU: cupy imports, counts a device, and runs a tiny kernel."""
    reason = _importable("cupy")
    if reason:
        return BackendStatus("cupy", False, reason)
    cupy = importlib.import_module("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError without a driver
        return BackendStatus("cupy", False, f"no CUDA device ({type(e).__name__}: {e})")
    if count == 0:
        return BackendStatus("cupy", False, "no CUDA device (device count is 0)")
    try:
        ok = int((cupy.arange(4) * 2).sum()) == 12
    except Exception as e:  # kernel compilation or launch failure
        return BackendStatus("cupy", False, f"a test kernel failed: {type(e).__name__}: {e}")
    if not ok:
        return BackendStatus("cupy", False, "a test kernel returned a wrong result")
    names = []
    for i in range(count):
        props = cupy.cuda.runtime.getDeviceProperties(i)
        names.append(f"cuda:{i} {props['name'].decode()}")
    return BackendStatus("cupy", True, "", tuple(names))


@functools.cache
def _torch_cuda_status() -> BackendStatus:
    torch = importlib.import_module("torch")
    if not torch.cuda.is_available():
        return BackendStatus("torch", False, "torch.cuda.is_available() is False")
    n = torch.cuda.device_count()
    return BackendStatus("torch", True, "", tuple(f"cuda:{i}" for i in range(n)))


def _status(name: str) -> BackendStatus:
    if name == "cupy":
        return _cupy_status()
    reason = _importable({"torch": "torch", "array_api_strict": "array_api_strict"}.get(name, name))
    if reason:
        return BackendStatus(name, False, reason)
    devices: tuple[str, ...] = ("cpu",)
    if name == "torch" and _torch_cuda_status().usable:
        devices += _torch_cuda_status().devices
    if name == "array_api_strict":
        xp = importlib.import_module("array_api_strict")
        devices = tuple(d._device for d in xp.__array_namespace_info__().devices())
    return BackendStatus(name, True, "", devices)


def list_backends() -> list[BackendStatus]:
    """Every known backend with whether it is usable here and why not."""
    return [_status(name) for name in NAMES]


# ---- selection -------------------------------------------------------------------------


def resolve_name(name: str | None = None) -> str:
    """Explicit name, else ``$BPTT_BACKEND``, else ``"numpy"``; ``"auto"`` picks a GPU."""
    if name is None:
        name = os.environ.get(ENV_VAR) or "numpy"
    name = name.strip().lower()
    if name == "auto":
        return "cupy" if _cupy_status().usable else "numpy"
    if name not in _LOADERS:
        raise BackendError(f"backend: expected one of {[*NAMES, 'auto']}; got {name!r}")
    return name


def get_backend(name: str | None = None, device: Any = None) -> Backend:
    """The backend called ``name`` (see :func:`resolve_name`) on ``device``."""
    return _LOADERS[resolve_name(name)](device)


def backend_of(x: Any) -> Backend:
    """The backend and device an existing array lives on."""
    module = type(x).__module__.split(".")[0]
    if module == "numpy":
        return get_backend("numpy")
    if module in ("cupy", "torch", "array_api_strict"):
        return _LOADERS[module](x.device)
    raise BackendError(f"not an array of a known backend: {type(x).__module__}.{type(x).__name__}")


# ---- description for `bptt info` -----------------------------------------------------


def _version(module: str) -> str:
    return str(getattr(importlib.import_module(module), "__version__", "unknown"))


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def _describe_cupy() -> dict[str, str]:
    cupy = importlib.import_module("cupy")
    runtime = cupy.cuda.runtime
    info = {
        "version": _version("cupy"),
        "CUDA runtime": _cuda_version(runtime.runtimeGetVersion()),
        "CUDA driver": _cuda_version(runtime.driverGetVersion()),
    }
    for i in range(runtime.getDeviceCount()):
        props = runtime.getDeviceProperties(i)
        info[f"cuda:{i}"] = f"{props['name'].decode()}, {props['totalGlobalMem'] / 2**30:.1f} GiB"
    pool = cupy.get_default_memory_pool()
    info["memory pool"] = (
        f"{type(pool).__name__}: {pool.used_bytes() / 2**20:.1f} MiB used, "
        f"{pool.total_bytes() / 2**20:.1f} MiB held"
    )
    return info


def describe(name: str) -> dict[str, str]:
    """What ``bptt info`` shows for one backend: versions and devices, or why not usable."""
    status = _status(name)
    if not status.usable:
        return {"usable": f"no: {status.reason}"}
    info = {"usable": "yes", "devices": ", ".join(status.devices)}
    if name == "cupy":
        info.update(_describe_cupy())
    elif name == "numpy":
        info["version"] = np.__version__
    else:
        info["version"] = _version(name)
    if name == "torch":
        cuda = _torch_cuda_status()
        info["CUDA"] = "usable" if cuda.usable else f"not usable: {cuda.reason}"
    if name == "array_api_strict":
        flags = importlib.import_module("array_api_strict").get_array_api_strict_flags()
        info["standard version"] = str(flags["api_version"])
    return info
