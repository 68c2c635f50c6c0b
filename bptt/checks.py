"""Argument checks for the public functions, run before any work.

:func:`check_call` looks only at shapes and dtypes (free, never touches device
data). :func:`check_values` looks at values (ids in range, finite numbers, 0/1
masks): one reduction per array, converted to a Python bool, which costs a
device synchronisation; training loops check their data once and skip it.
Messages name the argument, what was expected and what was given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from .backends import namespace_of
from .heads import HEADS

__all__ = ["PARAM_KEYS", "Dims", "check_call", "check_params", "check_values"]

PARAM_KEYS = ("U", "W", "V", "b", "c")
REDUCTIONS = ("mean", "sum")


class Dims(NamedTuple):
    M: int
    D: int
    C: int
    dtype: Any


def _shape_error(name: str, expected: str, x: Any) -> ValueError:
    return ValueError(f"{name}: expected shape {expected}; got {tuple(x.shape)}")


def _check_dtype(name: str, x: Any, dims: Dims) -> None:
    if x.dtype != dims.dtype:
        raise TypeError(f"{name}: dtype {x.dtype} differs from the parameters' {dims.dtype}")


def check_params(params: Any) -> Dims:
    """U (D, M), W (D, D), V (C, D), optional b (D,) and c (C,), one floating dtype."""
    return _check_params(params, {})[1]


def _check_params(params: Any, others: dict[str, Any]) -> tuple[Any, Dims]:
    """:func:`check_params`, and the one namespace of the parameters and ``others``
    (named arrays or None), found in one pass. Returns (xp, dims)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of arrays; got {type(params).__name__}")
    missing = [k for k in ("U", "W", "V") if k not in params]
    if missing:
        raise ValueError(f"params: missing key(s) {missing}; expected U, W, V and optional b, c")
    extra = [k for k in params if k not in PARAM_KEYS]
    if extra:
        raise ValueError(f"params: unknown key(s) {extra}; expected U, W, V and optional b, c")
    named = {**{f"params[{k!r}]": params[k] for k in params}, **others}
    for name, x in named.items():  # a subclass that means "ignore these entries"
        if type(x).__module__.startswith("numpy.ma"):
            raise TypeError(
                f"{name}: a NumPy masked array; its mask would be ignored (the math reads "
                "every entry): pass a plain array (x.filled(...)), and mask= for padded steps"
            )
    xp, _ = namespace_of(named)
    U, W, V = params["U"], params["W"], params["V"]
    for key in ("U", "W", "V"):
        if params[key].ndim != 2:
            raise ValueError(
                f"params['{key}']: expected a matrix; got shape {tuple(params[key].shape)}"
            )
    D, M = U.shape
    C = V.shape[0]
    if tuple(W.shape) != (D, D):
        raise _shape_error(
            "params['W']", f"(D, D) = ({D}, {D}) to match U (D, M) = {tuple(U.shape)}", W
        )
    if V.shape[1] != D:
        raise _shape_error("params['V']", f"(C, D) with D = {D} to match U {tuple(U.shape)}", V)
    for key, n in (("b", D), ("c", C)):
        if params.get(key) is not None and tuple(params[key].shape) != (n,):
            raise _shape_error(f"params['{key}']", f"({n},)", params[key])
    dtype = U.dtype
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"params['U']: expected a floating dtype; got {dtype}")
    for key in params:
        if params[key] is not None and params[key].dtype != dtype:
            raise TypeError(
                f"params['{key}']: dtype {params[key].dtype} differs from params['U'] {dtype}"
            )
    return xp, Dims(int(M), int(D), int(C), dtype)


def check_call(
    params: Any,
    inputs: Any,
    *,
    targets: Any = None,
    h0: Any = None,
    mask: Any = None,
    head: str = "softmax",
    reduction: str = "mean",
    dropout_mask: Any = None,
    need_targets: bool = False,
) -> tuple[Any, Dims]:
    """Shape, dtype, library and device checks for one call. Returns (xp, dims)."""
    others = dict(inputs=inputs, targets=targets, h0=h0, mask=mask, dropout_mask=dropout_mask)
    xp, dims = _check_params(params, others)
    if head not in HEADS:
        raise ValueError(f"head: expected one of {list(HEADS)}; got {head!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}; got {reduction!r}")

    if inputs.ndim == 2:
        if not xp.isdtype(inputs.dtype, "integral"):
            raise TypeError(
                f"inputs: (T, B) inputs are token ids and need an integer dtype; got {inputs.dtype}"
            )
    elif inputs.ndim == 3:
        if not xp.isdtype(inputs.dtype, "real floating"):
            raise TypeError(
                f"inputs: (T, B, M) dense inputs need a floating dtype; got {inputs.dtype}"
            )
        _check_dtype("inputs", inputs, dims)
        if inputs.shape[2] != dims.M:
            raise _shape_error("inputs", f"(T, B, M) with M = {dims.M} (columns of U)", inputs)
    else:
        raise ValueError(
            "inputs: expected token ids (T, B) or dense vectors (T, B, M); "
            f"got shape {tuple(inputs.shape)}"
        )
    T, B = inputs.shape[:2]
    if T == 0 or B == 0:
        raise ValueError(f"inputs: T and B must be at least 1; got shape {tuple(inputs.shape)}")

    if h0 is not None:
        if tuple(h0.shape) != (B, dims.D):
            raise _shape_error("h0", f"(B, D) = ({B}, {dims.D})", h0)
        _check_dtype("h0", h0, dims)
    if dropout_mask is not None:
        if tuple(dropout_mask.shape) != (T, B, dims.D):
            raise _shape_error("dropout_mask", f"(T, B, D) = ({T}, {B}, {dims.D})", dropout_mask)
        _check_dtype("dropout_mask", dropout_mask, dims)
    if mask is not None and tuple(mask.shape) != (T, B):
        raise _shape_error("mask", f"(T, B) = ({T}, {B})", mask)
    if mask is not None and not (
        xp.isdtype(mask.dtype, "bool") or xp.isdtype(mask.dtype, "numeric")
    ):
        raise TypeError(f"mask: expected a boolean or 0/1 array; got dtype {mask.dtype}")

    if targets is None:
        if need_targets:
            raise TypeError("targets: required")
        return xp, dims
    if head == "softmax":
        if tuple(targets.shape) != (T, B):
            raise _shape_error(
                "targets", f"(T, B) = ({T}, {B}) class ids for the softmax head", targets
            )
        if not xp.isdtype(targets.dtype, "integral"):
            raise TypeError(
                "targets: softmax targets are class ids and need an integer dtype; "
                f"got {targets.dtype}"
            )
    else:
        ok = tuple(targets.shape) == (T, B, dims.C) or (
            dims.C == 1 and tuple(targets.shape) == (T, B)
        )
        if not ok:
            raise _shape_error(
                "targets",
                f"(T, B, C) = ({T}, {B}, {dims.C}) 0/1 labels for the sigmoid head",
                targets,
            )
        if not (
            xp.isdtype(targets.dtype, "bool")
            or xp.isdtype(targets.dtype, "real floating")
            or xp.isdtype(targets.dtype, "integral")
        ):
            raise TypeError(
                "targets: sigmoid targets need a bool, integer or floating dtype; "
                f"got {targets.dtype}"
            )
    return xp, dims


MAX_KEEP_SCALE = 2.0**53  # 1 / (1 - p) for the largest float64 p below 1


def _dropout_ok(dropout_mask: Any, xp: Any) -> Any:
    """0-d: every entry is 0 or one common multiplier 1 / (1 - p), in [1, 2^53] (no sync)."""
    top = xp.max(dropout_mask)  # ()
    one_scale = xp.all((dropout_mask == 0) | (dropout_mask == top))
    return one_scale & ((top == 0) | ((top >= 1) & (top <= MAX_KEEP_SCALE)))


def _value_conditions(
    params: Any, inputs: Any, *, targets: Any, h0: Any, mask: Any, head: str, dims: Dims, xp: Any,
    dropout_mask: Any = None,
) -> list[Any]:  # fmt: skip
    """Every value condition of a call as a 0-d boolean device array (no sync)."""
    conds = [xp.all(xp.isfinite(p)) for p in params.values()]
    if dropout_mask is not None:
        conds.append(_dropout_ok(dropout_mask, xp))
    if inputs.ndim == 2:
        conds.append(xp.all((inputs >= 0) & (inputs < dims.M)))
    else:
        conds.append(xp.all(xp.isfinite(inputs)))
    if h0 is not None:
        conds.append(xp.all(xp.isfinite(h0)))
    if mask is not None:
        if not xp.isdtype(mask.dtype, "bool"):
            conds.append(xp.all((mask == 0) | (mask == 1)))
            mask = mask != 0
        conds.append(xp.any(mask))
    if targets is not None:
        if head == "softmax":
            conds.append(xp.all((targets >= 0) & (targets < dims.C)))
        elif not xp.isdtype(targets.dtype, "bool"):
            conds.append(xp.all((targets >= 0) & (targets <= 1)))
    return conds


def check_values(
    params: Any,
    inputs: Any,
    *,
    targets: Any = None,
    h0: Any = None,
    mask: Any = None,
    head: str = "softmax",
    dims: Dims,
    xp: Any,
    dropout_mask: Any = None,
) -> None:
    """Value checks: ids and targets in range, finite numbers, 0/1 masks, dropout
    multipliers that are 0 or one 1 / (1 - p).

    All conditions are reduced to one device flag, read once: one host sync per
    call. Only when it is false are the conditions read one by one, to name the
    argument at fault.
    """
    conds = _value_conditions(
        params, inputs, targets=targets, h0=h0, mask=mask, head=head, dims=dims, xp=xp,
        dropout_mask=dropout_mask,
    )  # fmt: skip
    if bool(xp.all(xp.stack(conds))):  # the one host sync of a value check
        return
    if dropout_mask is not None and not bool(_dropout_ok(dropout_mask, xp)):
        low, high = float(xp.min(dropout_mask)), float(xp.max(dropout_mask))
        got = "NaN" if math.isnan(low + high) else f"values from {low!r} to {high!r}"
        raise ValueError(
            "dropout_mask: expected multipliers 0 (dropped) or one common 1 / (1 - p) in "
            f"[1, 2^53] (kept); got {got}"
        )
    _explain(params, inputs, targets=targets, h0=h0, mask=mask, head=head, dims=dims, xp=xp)
    raise ValueError("a value check failed")  # not reached: _explain names the argument


def _range(x: Any, xp: Any) -> str:
    return f"got min {int(xp.min(x))}, max {int(xp.max(x))}"


def _explain(
    params: Any, inputs: Any, *, targets: Any, h0: Any, mask: Any, head: str, dims: Dims, xp: Any
) -> None:
    """Raise the ValueError that names the first failed value condition (error path)."""
    for key, p in params.items():
        if not bool(xp.all(xp.isfinite(p))):
            raise ValueError(f"params['{key}']: contains NaN or infinite values")
    if inputs.ndim == 2:
        if not bool(xp.all((inputs >= 0) & (inputs < dims.M))):
            raise ValueError(f"inputs: token ids must lie in [0, {dims.M}); {_range(inputs, xp)}")
    elif not bool(xp.all(xp.isfinite(inputs))):
        raise ValueError("inputs: contains NaN or infinite values")
    if h0 is not None and not bool(xp.all(xp.isfinite(h0))):
        raise ValueError("h0: contains NaN or infinite values")
    if mask is not None:
        if not xp.isdtype(mask.dtype, "bool"):
            if not bool(xp.all((mask == 0) | (mask == 1))):
                raise ValueError("mask: a numeric mask must hold only 0 and 1")
            mask = mask == 1
        if not bool(xp.any(mask)):
            raise ValueError("mask: every step is masked; at least one step must count")
    if targets is None:
        return
    if head == "softmax":
        if not bool(xp.all((targets >= 0) & (targets < dims.C))):
            raise ValueError(f"targets: class ids must lie in [0, {dims.C}); {_range(targets, xp)}")
    elif not xp.isdtype(targets.dtype, "bool"):
        if not bool(xp.all((targets >= 0) & (targets <= 1))):
            raise ValueError("targets: sigmoid targets must lie in [0, 1]")
