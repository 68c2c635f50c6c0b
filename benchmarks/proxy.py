"""A counting proxy for an array namespace: our GPU stand-in's eyes.

No GPU here, so what a step would do on CuPy or torch CUDA is read off a proxy
wrapped around array_api_strict (``device1`` refuses NumPy conversion and device
mixing, as CuPy does). Every namespace call and array operator goes through it
and is recorded by name and kind:

- **kernels**: operations that launch device work (arithmetic, products,
  reductions, creation, copies, gathers);
- **views**: basic indexing, ``reshape`` of a contiguous array, ``.T``/``.mT`` (no
  kernel on CuPy or torch; a ``reshape`` that must copy counts as a kernel);
- **metadata**: ``isdtype``, ``finfo``, ``iinfo``, ``__array_namespace_info__``;
- **transfers**: ``asarray`` of host data (a host-to-device copy);
- **syncs**: host conversions (``__bool__``, ``__float__``, ``__int__``,
  ``__index__``, ``__array__``, ``__dlpack__``, ``item``, ``tolist``, ...) raise
  :class:`HostSync`; operations that synchronise on CuPy or torch CUDA because their
  result's shape depends on data or because compat implements them through one
  (boolean-mask indexing or assignment, ``nonzero``, ``unique_*``, one-argument
  ``where``, ``clip``) raise :class:`SyncProne`.
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import Any

VIEWS = frozenset({"getitem", "reshape", "T", "mT"})
METADATA = frozenset({"isdtype", "finfo", "iinfo", "__array_namespace_info__", "result_type"})
SYNC_PRONE = frozenset(
    {"nonzero", "unique_all", "unique_counts", "unique_inverse", "unique_values", "clip"}
)
HOST_CONVERSIONS = (
    "__float__", "__bool__", "__int__", "__index__", "__complex__", "__array__", "__dlpack__",
    "__dlpack_device__", "__iter__", "__len__", "item", "tolist", "get", "to_numpy", "numpy",
)  # fmt: skip


class HostSync(AssertionError):
    """An array was turned into a host value."""


class SyncProne(AssertionError):
    """An operation that synchronises with the host on CuPy or torch CUDA."""


class Namespace:
    """Wraps an array namespace; counts every call, classifies it, refuses sync-prone ones."""

    def __init__(self, xp: Any) -> None:
        self._xp = xp
        self.ops: Counter[str] = Counter()
        self.transfers = 0
        self.dtypes: set[str] = set()

    # ---- the tallies ------------------------------------------------------------------

    def kernels(self) -> int:
        return sum(n for name, n in self.ops.items() if name not in VIEWS | METADATA)

    def views(self) -> int:
        return sum(n for name, n in self.ops.items() if name in VIEWS)

    def clear(self) -> None:
        self.ops.clear()
        self.transfers = 0

    # ---- the namespace ----------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._xp, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            _refuse(name, args, kwargs)
            self.ops[_kind(name, args)] += 1
            if name in ("asarray", "from_dlpack") and args and not isinstance(args[0], Array):
                self.transfers += 1  # host data (or a Python scalar) to the device
            return self.wrap(attr(*unwrap(args), **unwrap(kwargs)))

        return call

    def wrap(self, value: Any) -> Any:
        if isinstance(value, tuple):
            return tuple(self.wrap(v) for v in value)
        if hasattr(value, "__array_namespace__") and not isinstance(value, Array):
            if value.ndim > 0:  # 0-d counters may be float64 on purpose (exact counts)
                self.dtypes.add(str(value.dtype).rsplit(".", 1)[-1])
            return Array(value, self)
        return value


def _kind(name: str, args: tuple) -> str:
    """``reshape`` of an array whose rows are not contiguous copies: a kernel."""
    if name == "reshape" and args and isinstance(args[0], Array):
        host = getattr(args[0]._x, "_array", None)  # array_api_strict's NumPy array
        if host is not None and not host.flags.c_contiguous:
            return "reshape-copy"
    return name


def _refuse(name: str, args: tuple, kwargs: dict) -> None:
    if name in SYNC_PRONE:
        raise SyncProne(f"{name}() synchronises on CuPy / torch CUDA (or via compat)")
    if name == "where" and len(args) + len(kwargs) == 1:
        raise SyncProne("one-argument where() is nonzero(): its shape depends on the data")


def _is_mask(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    for k in keys:
        k = k._x if isinstance(k, Array) else k
        dtype = getattr(k, "dtype", None)
        if dtype is not None and "bool" in str(dtype):
            return True
    return False


def unwrap(value: Any) -> Any:
    if isinstance(value, Array):
        return value._x
    if isinstance(value, (tuple, list)):
        return type(value)(unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    return value


class Array:
    """A proxy array: operators counted, host conversions and mask indexing refused."""

    __slots__ = ("_ns", "_x")

    def __init__(self, x: Any, ns: Namespace) -> None:
        self._x, self._ns = x, ns

    def __array_namespace__(self, api_version: str | None = None) -> Namespace:
        return self._ns

    shape = property(lambda self: self._x.shape)  # metadata: static, never a sync
    ndim = property(lambda self: self._x.ndim)
    dtype = property(lambda self: self._x.dtype)
    device = property(lambda self: self._x.device)
    size = property(lambda self: self._x.size)

    def _op(self, name: str, fn: Any, *args: Any) -> Any:
        self._ns.ops[name] += 1
        return self._ns.wrap(fn(self._x, *unwrap(args)))

    T = property(lambda self: self._op("T", lambda x: x.T))
    mT = property(lambda self: self._op("mT", lambda x: x.mT))

    def __getitem__(self, key: Any) -> Any:
        if _is_mask(key):
            raise SyncProne("boolean-mask indexing: the result's shape is read from the device")
        name = "getitem" if not isinstance(key, Array) else "take"  # an index array gathers
        return self._op(name, operator.getitem, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        if _is_mask(key):
            raise SyncProne("boolean-mask assignment: CuPy reads the mask's count back")
        self._ns.ops["setitem"] += 1
        self._x[unwrap(key)] = unwrap(value)

    def to_device(self, device: Any, /, **kw: Any) -> Any:
        return self._op("to_device", lambda x: x.to_device(device, **kw))


def _binary(name: str) -> Any:
    def op(self: Array, other: Any) -> Any:
        return self._op(name, getattr(type(self._x), name), other)

    return op


def _inplace(name: str) -> Any:
    def op(self: Array, other: Any) -> Array:
        self._ns.ops[name] += 1
        self._x = getattr(self._x, name)(unwrap(other))
        self._ns.dtypes.add(str(self._x.dtype).rsplit(".", 1)[-1])
        return self

    return op


def _unary(name: str) -> Any:
    def op(self: Array) -> Any:
        return self._op(name, getattr(type(self._x), name))

    return op


def forbidden(name: str) -> Any:
    def op(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise HostSync(f"{name} called on a device array")

    return op


_ARITHMETIC = ("add", "sub", "mul", "truediv", "floordiv", "pow", "matmul", "mod", "and", "or",
               "xor", "lshift", "rshift")  # fmt: skip
for _name in _ARITHMETIC:
    setattr(Array, f"__{_name}__", _binary(f"__{_name}__"))
    setattr(Array, f"__r{_name}__", _binary(f"__r{_name}__"))
    setattr(Array, f"__i{_name}__", _inplace(f"__i{_name}__"))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(Array, f"__{_name}__", _binary(f"__{_name}__"))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(Array, f"__{_name}__", _unary(f"__{_name}__"))
Array.__hash__ = None  # type: ignore[assignment]
for _name in HOST_CONVERSIONS:
    setattr(Array, _name, forbidden(_name))
