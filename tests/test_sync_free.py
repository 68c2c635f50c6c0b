"""A training step never synchronises with the device, and costs O(T) array operations.

No GPU here, so this is proved structurally: the array namespace is wrapped in a
counting proxy (over array_api_strict's ``device1``, which refuses conversion to
NumPy like CuPy does) and a full step -- ``loss_and_grad``, ``clip_by_global_norm``,
an Adam update -- runs on proxy arrays. Any conversion of an array to a host
value (``__float__``, ``__bool__``, ``__int__``, ``__index__``, ``__array__``,
``__dlpack__``, ``.item()``, ``.tolist()``, ``.get()``, ``Backend.to_numpy``) fails
the test. Every operator and namespace call is counted: a step costs exactly
``a + b T`` operations, with b = 13 (5 per step of the forward recurrence, 8 of
the backward one) and a about 150 (the checks, the head, the non-recurrent
products, the clip and the Adam update), whatever T. In float32 no
operation may produce a float64 array (no silent upcast by a NumPy scalar).
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import Any

import numpy as np
import pytest

import bptt
from bptt import backends, optim

STRICT = "array_api_strict"
PER_STEP = (
    10  # array operations per time step: 4 forward (a view, a product, a sum, tanh) + 6 backward
)


class HostSync(AssertionError):
    """An array was turned into a host value inside a training step."""


class Namespace:
    """A counting proxy for an array namespace: every function call is one operation."""

    def __init__(self, xp: Any) -> None:
        self._xp = xp
        self.ops: Counter[str] = Counter()
        self.dtypes: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._xp, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.ops[name] += 1
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


def unwrap(value: Any) -> Any:
    if isinstance(value, Array):
        return value._x
    if isinstance(value, (tuple, list)):
        return type(value)(unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    return value


class Array:
    """A proxy array: operators are counted, host conversions raise :class:`HostSync`."""

    __slots__ = ("_ns", "_x")

    def __init__(self, x: Any, ns: Namespace) -> None:
        self._x, self._ns = x, ns

    def __array_namespace__(self, api_version: str | None = None) -> Namespace:
        return self._ns

    # metadata: static, never a sync
    shape = property(lambda self: self._x.shape)
    ndim = property(lambda self: self._x.ndim)
    dtype = property(lambda self: self._x.dtype)
    device = property(lambda self: self._x.device)
    size = property(lambda self: self._x.size)

    def _op(self, name: str, fn: Any, *args: Any) -> Any:
        self._ns.ops[name] += 1
        return self._ns.wrap(fn(self._x, *unwrap(args)))

    @property
    def T(self) -> Any:
        return self._op("T", lambda x: x.T)

    @property
    def mT(self) -> Any:
        return self._op("mT", lambda x: x.mT)

    def __getitem__(self, key: Any) -> Any:
        return self._op("getitem", operator.getitem, key)

    def __setitem__(self, key: Any, value: Any) -> None:
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


def _forbidden(name: str) -> Any:
    def op(self: Array, *args: Any, **kwargs: Any) -> Any:
        raise HostSync(f"{name} called on an array inside a training step")

    return op


for _name in (
    "add",
    "sub",
    "mul",
    "truediv",
    "floordiv",
    "pow",
    "matmul",
    "mod",
    "and",
    "or",
    "xor",
    "lshift",
    "rshift",
):
    setattr(Array, f"__{_name}__", _binary(f"__{_name}__"))
    setattr(Array, f"__r{_name}__", _binary(f"__r{_name}__"))
    setattr(Array, f"__i{_name}__", _inplace(f"__i{_name}__"))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(Array, f"__{_name}__", _binary(f"__{_name}__"))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(Array, f"__{_name}__", _unary(f"__{_name}__"))
Array.__hash__ = None  # type: ignore[assignment]
for _name in (
    "__float__",
    "__bool__",
    "__int__",
    "__index__",
    "__complex__",
    "__array__",
    "__dlpack__",
    "__dlpack_device__",
    "__iter__",
    "__len__",
    "item",
    "tolist",
    "get",
    "to_numpy",
    "numpy",
):
    setattr(Array, _name, _forbidden(_name))


def training_step(T: int, *, dtype: str = "float64", variant: str = "plain") -> Namespace:
    """One full step on proxy arrays; returns the namespace with its counts."""
    be = backends.get_backend(STRICT, "device1")
    ns = Namespace(be.xp)
    B, M, D, C = 3, 5, 4, 6
    rng = np.random.default_rng(0)
    host = bptt.init_params(M, D, C, dtype=dtype, seed=1, backend=STRICT, device="device1")
    params = {k: Array(v, ns) for k, v in host.items()}

    def arr(a: Any, dt: Any = None) -> Array:
        return Array(be.asarray(a, dtype=dt), ns)

    kw: dict[str, Any] = {}
    if variant == "masked":
        kw = dict(mask=arr(rng.random((T, B)) < 0.8), h0=arr(rng.random((B, D)), dtype))
        kw["dropout_mask"] = arr((rng.random((T, B, D)) < 0.5) * 2.0, dtype)
    x = arr(rng.integers(0, M, (T, B)))
    y = arr(rng.integers(0, C, (T, B)))
    if variant == "sigmoid":
        kw = dict(head="sigmoid", reduction="sum")
        x = arr(rng.standard_normal((T, B, M)), dtype)
        y = arr(rng.random((T, B, C)) < 0.5)
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(1e-2))
    state = opt.init(params)
    ns.ops.clear()
    loss, grads, h_last = bptt.loss_and_grad(params, x, y, check_values=False, **kw)
    updates, state = opt.update(grads, state, params)
    new_params = optim.apply_updates(params, updates)
    norm = optim.last_norm(state)
    assert all(isinstance(v, Array) for v in (loss, norm, h_last, *new_params.values()))
    return ns


@pytest.fixture(autouse=True)
def _no_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends.Backend, "to_numpy", _forbidden("Backend.to_numpy"))


@pytest.mark.parametrize("variant", ["plain", "masked", "sigmoid"])
def test_step_never_converts_an_array_to_a_host_value(variant: str) -> None:
    ns = training_step(6, variant=variant)
    assert sum(ns.ops.values()) > 0


def test_the_proxy_catches_a_sync() -> None:
    be = backends.get_backend(STRICT, "device1")
    ns = Namespace(be.xp)
    a = Array(be.asarray([1.0, 2.0]), ns)
    for convert in (float, bool, lambda v: v.item(), lambda v: v.tolist(), np.asarray):
        with pytest.raises(HostSync):
            convert(ns.sum(a))


@pytest.mark.parametrize("variant", ["plain", "masked", "sigmoid"])
def test_operations_per_step_are_linear_in_T(variant: str) -> None:
    counts = {T: sum(training_step(T, variant=variant).ops.values()) for T in (2, 3, 5, 9)}
    slope = (counts[9] - counts[5]) // 4
    assert all(counts[T] == counts[2] + slope * (T - 2) for T in counts), counts
    assert slope == PER_STEP, counts
    assert counts[2] - 2 * slope < 200, counts  # T-independent: checks, head, clip, Adam


@pytest.mark.parametrize("variant", ["plain", "masked", "sigmoid"])
def test_float32_step_never_makes_float64(variant: str) -> None:
    ns = training_step(4, dtype="float32", variant=variant)
    assert "float64" not in ns.dtypes, ns.dtypes
    assert "float32" in ns.dtypes


def test_numpy_float32_step_stays_float32() -> None:
    """The same on NumPy itself, where a NumPy float64 scalar would upcast silently."""
    params = bptt.init_params(5, 8, 6, dtype="float32", seed=0, backend="numpy")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, (4, 3)), rng.integers(0, 6, (4, 3))
    keep = (rng.random((4, 3, 8)) < 0.5).astype(np.float32) * 2
    loss, grads, h = bptt.loss_and_grad(params, x, y, dropout_mask=keep)
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(1e-2))
    updates, state = opt.update(grads, opt.init(params), params)
    new = optim.apply_updates(params, updates)
    for a in (loss, h, optim.last_norm(state), *grads.values(), *new.values()):
        assert a.dtype == np.float32
