"""The Backend record: an array namespace bound to one device, and the way to the host."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from ._arrays import context_for
from ._dtypes import X64_GATED, dtype_name, gated_and_off, refusal
from ._transfer import host_copies

# Libraries whose arrays cannot be written in place (``x[i] = v`` raises).
IMMUTABLE = frozenset({"jax"})


class BackendError(ValueError):
    """An unknown backend or device, or one that is not usable on this machine."""


@dataclass(frozen=True)
class Backend:
    """An array namespace bound to one device.

    ``xp`` is array-API compatible (array_api_compat's wrapper where the library
    needs one, ``jax.numpy`` itself for JAX); ``device`` is what new arrays are
    created on.
    """

    name: str
    xp: Any
    device: Any
    _to_numpy: Callable[[Any], np.ndarray]
    _synchronize: Callable[[Any], None]

    @property
    def writeable(self) -> bool:
        """False when the library's arrays are immutable (JAX): update by building new ones."""
        return self.name not in IMMUTABLE

    @property
    def integer(self) -> Any:
        """The default integer dtype on this device (int32 on JAX without x64)."""
        return self.xp.__array_namespace_info__().default_dtypes(device=self.device)["integral"]

    def asarray(self, x: Any, *, dtype: Any = None) -> Any:
        """Host data (NumPy array, list, scalar) to an array on this backend's device.

        On JAX a 64-bit ``dtype`` without x64 mode raises ValueError instead of
        being truncated to 32 bits.
        """
        if dtype is not None and self.name in X64_GATED:
            self.require_dtype(dtype_name(dtype))
        if isinstance(dtype, str):
            dtype = getattr(self.xp, dtype)
        return self.xp.asarray(x, dtype=dtype, device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        """The one place where device data becomes host NumPy data.

        Waits for the computation of ``x`` (also on JAX, whose dispatch is
        asynchronous). The result may share memory with ``x`` on the CPU, and is
        read-only for JAX arrays.
        """
        return self._to_numpy(x)

    @overload
    def to_numpy_many(self, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]: ...
    @overload
    def to_numpy_many(self, arrays: Sequence[Any]) -> list[np.ndarray]: ...
    def to_numpy_many(
        self, arrays: Mapping[str, Any] | Sequence[Any]
    ) -> dict[str, np.ndarray] | list[np.ndarray]:
        """``to_numpy`` of each array, in one device-to-host transfer per dtype.

        For checkpoints: a GPU copy blocks, and sixteen small blocking copies cost
        more than two large ones. Values, dtypes and shapes equal ``to_numpy``'s;
        a dict in gives a dict with the same keys out. All arrays must be on this
        backend's device.
        """
        if isinstance(arrays, Mapping):
            keys = list(arrays)
            host = host_copies(self.xp, self._to_numpy, [arrays[k] for k in keys])
            return dict(zip(keys, host, strict=True))
        return host_copies(self.xp, self._to_numpy, list(arrays))

    def synchronize(self) -> None:
        """Block until queued device work is done (a no-op on the CPU).

        A no-op on JAX too: JAX has no device-wide barrier, only per-array
        ``block_until_ready``; ``to_numpy`` waits for its array anyway.
        """
        self._synchronize(self.device)

    def activate(self) -> contextlib.AbstractContextManager[Any]:
        """Make this device the current one while the block runs.

        CuPy launches kernels on the *current* device, so work on ``cuda:1`` must run
        inside ``with cupy.cuda.Device(1):``; nothing then touches GPU 0. JAX gets
        ``jax.default_device(device)``. Other libraries follow the arrays' own
        device: a no-op for them.
        """
        return context_for(self.name, self.device)

    def supports(self, dtype: str) -> bool:
        """True when ``dtype`` (e.g. ``"float64"``) exists on this device.

        On JAX the 64-bit dtypes exist only while ``jax_enable_x64`` is on.
        """
        if gated_and_off(self.name, dtype):
            return False
        info = getattr(self.xp, "__array_namespace_info__", None)
        if info is None:
            return hasattr(self.xp, dtype)
        try:
            return dtype in info().dtypes(device=self.device)
        except Exception:  # older or partial info objects
            return hasattr(self.xp, dtype)

    def require_dtype(self, dtype: str, what: str = "dtype") -> None:
        """Raise ValueError, naming the argument ``what``, unless :meth:`supports` ``dtype``."""
        if not self.supports(dtype):
            raise ValueError(refusal(self.name, self.device, dtype, what))
