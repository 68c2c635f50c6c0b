"""Usability probes: is a backend usable on this machine, and if not, why.

Probes never raise and never hang; the expensive ones are cached.
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

NAMES = ("numpy", "cupy", "torch", "array_api_strict", "jax")
"""The backends bptt knows, whether or not they are usable here."""


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend is usable here, and if not, why."""

    name: str
    usable: bool
    reason: str  # "" when usable
    devices: tuple[str, ...] = ()


def importable(module: str) -> str:
    """``""`` when ``module`` imports, else why not."""
    try:
        importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install raising anything
        return f"cannot import {module}: {type(e).__name__}: {e}"
    return ""


def _no_cuda_device() -> str:
    """Why no CUDA device can be here, found without importing cupy (whose import may
    load CUDA libraries and warn on every process of a NumPy run), or ""."""
    if not sys.platform.startswith("linux") or "cupy" in sys.modules:
        return ""
    dev = Path("/dev")
    if any(dev.glob("nvidia[0-9]*")) or (dev / "dxg").exists():  # a GPU, or WSL's
        return ""
    return "no CUDA device (no /dev/nvidia* here; cupy was not imported)"


@functools.cache
def cupy_status() -> BackendStatus:
    """A usable GPU: cupy imports, counts a device, and runs a tiny kernel. Without a
    GPU device node cupy is not even imported; its import warnings never show."""
    reason = _no_cuda_device()
    if not reason:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reason = importable("cupy")
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
def torch_cuda_status() -> BackendStatus:
    """torch's CUDA devices (torch itself must import)."""
    torch = importlib.import_module("torch")
    if not torch.cuda.is_available():
        return BackendStatus("torch", False, "torch.cuda.is_available() is False")
    n = torch.cuda.device_count()
    return BackendStatus("torch", True, "", tuple(f"cuda:{i}" for i in range(n)))


@functools.cache
def jax_status() -> BackendStatus:
    """JAX imports, implements the array API in ``jax.numpy``, and starts a platform.

    Starts JAX's runtime: on a GPU, JAX then reserves 75% of its memory unless
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set before.
    """
    reason = importable("jax")
    if reason:
        return BackendStatus("jax", False, reason)
    jax = importlib.import_module("jax")
    if not hasattr(importlib.import_module("jax.numpy"), "__array_api_version__"):
        reason = f"jax {jax.__version__} predates the array API in jax.numpy (needs >= 0.4.32)"
        return BackendStatus("jax", False, reason)
    try:
        devices = list(jax.local_devices())
        if devices[0].platform != "cpu":
            devices += jax.local_devices(backend="cpu")
    except Exception as e:  # a platform that fails to start
        return BackendStatus("jax", False, f"no JAX device ({type(e).__name__}: {e})")
    return BackendStatus("jax", True, "", tuple(str(d) for d in devices))


def status(name: str) -> BackendStatus:
    """The status of the backend called ``name`` (one of :data:`NAMES`)."""
    if name == "cupy":
        return cupy_status()
    if name == "jax":
        return jax_status()
    reason = importable(name)
    if reason:
        return BackendStatus(name, False, reason)
    devices: tuple[str, ...] = ("cpu",)
    if name == "torch" and torch_cuda_status().usable:
        devices += torch_cuda_status().devices
    if name == "array_api_strict":
        xp = importlib.import_module("array_api_strict")
        devices = tuple(d._device for d in xp.__array_namespace_info__().devices())
    return BackendStatus(name, True, "", devices)


def list_backends() -> list[BackendStatus]:
    """Every known backend with whether it is usable here and why not."""
    return [status(name) for name in NAMES]
