"""What ``bptt info`` shows for each backend."""

from __future__ import annotations

import importlib

import numpy as np

from ._dtypes import jax_x64_enabled
from ._probe import status, torch_cuda_status


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


def _describe_jax() -> dict[str, str]:
    jax = importlib.import_module("jax")
    x64 = "on" if jax_x64_enabled() else "off (float64 and int64 refused)"
    return {
        "version": _version("jax"),
        "standard version": str(importlib.import_module("jax.numpy").__array_api_version__),
        "default device": str(jax.local_devices()[0]),
        "x64": x64,
    }


def describe(name: str) -> dict[str, str]:
    """What ``bptt info`` shows for one backend: versions and devices, or why not usable."""
    backend_status = status(name)
    if not backend_status.usable:
        return {"usable": f"no: {backend_status.reason}"}
    info = {"usable": "yes", "devices": ", ".join(backend_status.devices)}
    if name == "cupy":
        info.update(_describe_cupy())
    elif name == "jax":
        info.update(_describe_jax())
    elif name == "numpy":
        info["version"] = np.__version__
    else:
        info["version"] = _version(name)
    if name == "torch":
        cuda = torch_cuda_status()
        info["CUDA"] = "usable" if cuda.usable else f"not usable: {cuda.reason}"
    if name == "array_api_strict":
        flags = importlib.import_module("array_api_strict").get_array_api_strict_flags()
        info["standard version"] = str(flags["api_version"])
    return info
