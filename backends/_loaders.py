"""One loader per library: a ``device=`` argument in, a Backend out.

Each imports its library only when called.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ._backend import Backend, BackendError
from ._devices import cupy_device_index, jax_device, strict_device, torch_device
from ._probe import cupy_status, jax_status, list_backends, torch_cuda_status


def _no_sync(device: Any) -> None:
    return None


def _usable_names() -> list[str]:
    return [s.name for s in list_backends() if s.usable]


def load_numpy(device: Any) -> Backend:
    if device not in (None, "cpu"):
        raise BackendError(f"device: numpy runs on 'cpu' only; got {device!r}")
    xp = importlib.import_module("array_api_compat.numpy")
    return Backend("numpy", xp, "cpu", np.asarray, _no_sync)


def load_array_api_strict(device: Any) -> Backend:
    xp = importlib.import_module("array_api_strict")
    cpu = xp.Device("CPU_DEVICE")

    def to_numpy(x: Any) -> np.ndarray:
        return np.asarray(x.to_device(cpu))

    return Backend("array_api_strict", xp, strict_device(xp, device), to_numpy, _no_sync)


def load_torch(device: Any) -> Backend:
    torch = importlib.import_module("torch")
    xp = importlib.import_module("array_api_compat.torch")
    dev = torch_device(torch, device)
    if dev.type == "cuda":
        status = torch_cuda_status()
        if not status.usable:
            raise BackendError(f"device: torch CUDA is not usable here: {status.reason}")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise BackendError(f"device: {dev} does not exist; {status.devices}")
    elif dev.type != "cpu":  # mps, xpu, meta, ...: listed is not usable; try one kernel
        _probe_torch_device(torch, dev)

    def to_numpy(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    def sync(d: Any) -> None:
        if d.type == "cuda":
            torch.cuda.synchronize(d)

    return Backend("torch", xp, dev, to_numpy, sync)


def _probe_torch_device(torch: Any, dev: Any) -> None:
    """BackendError unless a tiny kernel runs on ``dev`` and its result can be read back
    (torch's ``meta`` device computes shapes only; ``mps`` needs Apple's GPU)."""
    try:
        ok = int((torch.arange(4, device=dev) * 2).sum().cpu().item()) == 12
    except Exception as e:  # RuntimeError, NotImplementedError: no such device here
        first = (str(e).splitlines() or [""])[0].split(". ")[0][:160]  # one sentence
        reason = f"{type(e).__name__}: {first}"
    else:
        reason = "" if ok else "a test kernel returned a wrong result"
    if reason:
        raise BackendError(
            f"device: torch cannot compute on {str(dev)!r} here, or its arrays cannot be "
            f"read ({reason}); use 'cpu'" + (", or 'cuda'" if torch.cuda.is_available() else "")
        )


def load_cupy(device: Any) -> Backend:
    status = cupy_status()
    if not status.usable:
        usable = _usable_names()
        raise BackendError(f"backend 'cupy' is not usable here: {status.reason}. Usable: {usable}")
    cupy = importlib.import_module("cupy")
    xp = importlib.import_module("array_api_compat.cupy")
    index = cupy_device_index(device)
    if index >= len(status.devices):
        raise BackendError(f"device: CUDA device {index} does not exist; {status.devices}")

    def to_numpy(x: Any) -> np.ndarray:
        return x.get()

    def sync(d: Any) -> None:
        d.synchronize()

    return Backend("cupy", xp, cupy.cuda.Device(index), to_numpy, sync)


def load_jax(device: Any) -> Backend:
    """``jax.numpy`` (the array API since JAX 0.4.32) on one ``jax.Device``.

    ``to_numpy`` is ``numpy.asarray``, which waits for the value; ``synchronize``
    is a no-op (JAX has no device-wide barrier).
    """
    status = jax_status()
    if not status.usable:
        usable = _usable_names()
        raise BackendError(f"backend 'jax' is not usable here: {status.reason}. Usable: {usable}")
    jax = importlib.import_module("jax")
    xp = importlib.import_module("jax.numpy")
    return Backend("jax", xp, jax_device(jax, device), np.asarray, _no_sync)


LOADERS: dict[str, Callable[[Any], Backend]] = {
    "numpy": load_numpy,
    "cupy": load_cupy,
    "torch": load_torch,
    "array_api_strict": load_array_api_strict,
    "jax": load_jax,
}
