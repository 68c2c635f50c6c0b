"""Reading a ``device=`` argument as each library names its devices.

Each function takes the library's module (already imported by the caller) and
raises BackendError with the spellings it accepts.
"""

from __future__ import annotations

from typing import Any

from ._backend import BackendError


def strict_device(xp: Any, device: Any) -> Any:
    """array_api_strict: ``None`` (the CPU), a device name, or an ``xp.Device``."""
    if device is None:
        return xp.Device("CPU_DEVICE")
    if isinstance(device, str):
        names = [d._device for d in xp.__array_namespace_info__().devices()]
        if device not in names:
            raise BackendError(f"device: array_api_strict has devices {names}; got {device!r}")
        return xp.Device(device)
    return device


def torch_device(torch: Any, device: Any) -> Any:
    """torch: ``None`` (the CPU), an int (a CUDA index), ``"cuda:1"``, a ``torch.device``."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, int):
        return torch.device("cuda", device)
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise BackendError(f"device: not a torch device: {device!r} ({e})") from None


def cupy_device_index(device: Any) -> int:
    """CuPy: ``None`` (0), an int, ``"1"``, ``"cuda"``, ``"cuda:1"``, a ``cupy.cuda.Device``."""
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


def _jax_platform_devices(jax: Any, platform: str | None) -> list[Any]:
    """This process's devices of ``platform`` (``None``: JAX's default platform)."""
    try:
        return list(jax.local_devices(backend=platform))
    except RuntimeError as e:  # no such platform here, or it failed to start
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BackendError(f"device: JAX has no {platform!r} devices here ({first_line})") from None


def jax_device(jax: Any, device: Any) -> Any:
    """JAX: ``None`` (the default device), ``"cpu"``, ``"gpu"``, ``"tpu"``, ``"cuda"``,
    ``"gpu:1"`` (the second local GPU), an int (an index among the default
    platform's devices), ``"1"``, or a ``jax.Device``."""
    if isinstance(device, jax.Device):
        return device
    if device is None:  # jax.config's default device (a Device, a platform, or None)
        default = jax.config.jax_default_device
        return jax.local_devices()[0] if default is None else jax_device(jax, default)
    negative = isinstance(device, int) and device < 0
    if isinstance(device, bool) or not isinstance(device, (int, str)) or negative or device == "":
        raise BackendError(f"device: not a JAX device: {device!r}")
    text = str(device).strip().lower()
    platform, colon, index_text = text.partition(":")
    if not colon:  # "gpu" (its first device) or "1" (an index on the default platform)
        platform, index_text = ("", text) if text.isdigit() else (text, "0")
    if not index_text.isdigit():
        raise BackendError(f"device: a JAX device is 'cpu', 'gpu:1', 0, ...; got {device!r}")
    devices = _jax_platform_devices(jax, platform or None)
    index = int(index_text)
    if index >= len(devices):
        names = [str(d) for d in devices]
        raise BackendError(f"device: {device!r} does not exist; JAX has {names}")
    return devices[index]
