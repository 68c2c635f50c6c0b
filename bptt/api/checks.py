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

from ..backends import namespace_of
from ..math.layers import Arch

__all__ = [
    "Dims",
    "as_index",
    "check_call",
    "check_cotangents",
    "check_params",
    "check_values",
]

REDUCTIONS = ("mean", "sum")


class Dims(NamedTuple):
    M: int
    D: int
    C: int
    dtype: Any
    layers: int = 1
    directions: int = 1

    @property
    def arch(self) -> Arch:
        return Arch(self.layers, self.directions)

    @property
    def width(self) -> int:
        """K D: the units the output (and each layer above the first) reads."""
        return self.directions * self.D

    @property
    def h0_shape(self) -> str:
        return "(B, D)" if self.arch.single else "(L K, B, D)"


def _shape_error(name: str, expected: str, x: Any) -> ValueError:
    return ValueError(f"{name}: expected shape {expected}; got {tuple(x.shape)}")


def _check_dtype(name: str, x: Any, dims: Dims) -> None:
    if x.dtype != dims.dtype:
        raise TypeError(f"{name}: dtype {x.dtype} differs from the parameters' {dims.dtype}")


def check_params(model: Any, params: Any) -> Dims:
    """``params`` against ``model``'s template (:meth:`bptt.RNN.param_shapes`): the same
    keys, each the template's shape, one floating dtype, one library and device."""
    return _check_params(model, params, {})[1]


def _check_params(model: Any, params: Any, others: dict[str, Any]) -> tuple[Any, Dims]:
    """:func:`check_params`, and the one namespace of the parameters and ``others``
    (named arrays or None), found in one pass. Returns (xp, dims)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of arrays; got {type(params).__name__}")
    shapes = model.param_shapes()
    missing = [k for k in shapes if params.get(k) is None]
    extra = [k for k in params if k not in shapes and params[k] is not None]
    if missing or extra:
        what = f"missing key(s) {missing}" if missing else f"unknown key(s) {extra}"
        raise ValueError(f"params: {what}; this model ({_describe(model)}) has {list(shapes)}")
    named = {**{f"params[{k!r}]": params[k] for k in shapes}, **others}
    for name, x in named.items():  # a subclass that means "ignore these entries"
        if type(x).__module__.startswith("numpy.ma"):
            raise TypeError(
                f"{name}: a NumPy masked array; its mask would be ignored (the math reads "
                "every entry): pass a plain array (x.filled(...)), and mask= for padded steps"
            )
    xp, _ = namespace_of(named)
    for key, shape in shapes.items():
        if tuple(params[key].shape) != shape:
            raise _shape_error(f"params['{key}']", f"{shape} for {_describe(model)}", params[key])
    dtype = params["U"].dtype
    if not xp.isdtype(dtype, "real floating"):
        raise TypeError(f"params['U']: expected a floating dtype; got {dtype}")
    for key in shapes:
        if params[key].dtype != dtype:
            raise TypeError(
                f"params['{key}']: dtype {params[key].dtype} differs from params['U'] {dtype}"
            )
    dims = Dims(model.input_size, model.hidden_size, model.output_size, dtype, model.layers,
                model.directions)  # fmt: skip
    return xp, dims


def _describe(model: Any) -> str:
    """'cell tanh, 2 layers, 1 direction, M 5, D 8, C 5' for messages."""
    return (
        f"cell {model.cell}, {model.layers} layer(s), {model.directions} direction(s), "
        f"M {model.input_size}, D {model.hidden_size}, C {model.output_size}"
    )


def as_index(x: Any, xp: Any) -> Any:
    """Ids (or 0/1 targets and masks) of any integer dtype, as the namespace's default
    integer when they are neither int32 nor int64: cast once, at entry, so that a torch
    uint8 or uint16 array works as a NumPy one does (torch indexes and compares only
    some integer dtypes). Anything else is returned as it is, for the checks to judge."""
    if x is None or not hasattr(x, "dtype") or not xp.isdtype(x.dtype, "integral"):
        return x
    if x.dtype in (xp.int32, xp.int64):
        return x
    info = xp.__array_namespace_info__()
    return xp.astype(x, info.default_dtypes(device=x.device)["integral"])


def check_call(
    model: Any,
    params: Any,
    inputs: Any,
    *,
    targets: Any = None,
    h0: Any = None,
    mask: Any = None,
    reduction: str = "mean",
    dropout_mask: Any = None,
    need_targets: bool = False,
    layer_masks: Any = None,
) -> tuple[Any, Dims]:
    """Shape, dtype, library and device checks for one call of ``model``. Returns
    (xp, dims)."""
    head = model.head
    h0_parts = _h0_parts(model, h0)
    others = dict(inputs=inputs, targets=targets, mask=mask, dropout_mask=dropout_mask)
    others.update(h0_parts)
    if layer_masks is not None:
        one_array = hasattr(layer_masks, "ndim")  # an array is not a sequence of arrays
        if isinstance(layer_masks, Mapping) or one_array or not hasattr(layer_masks, "__len__"):
            raise TypeError(
                "layer_masks: expected a sequence of L - 1 arrays (T, B, K D); "
                f"got {type(layer_masks).__name__}"
            )
        others.update({f"layer_masks[{i}]": m for i, m in enumerate(layer_masks)})
    xp, dims = _check_params(model, params, others)
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

    for name, part in h0_parts.items():
        if tuple(part.shape) != _h0_shape(dims, B):
            raise _shape_error(name, f"{dims.h0_shape} = {_h0_shape(dims, B)}", part)
        _check_dtype(name, part, dims)
    width = "(T, B, D)" if dims.arch.single else "(T, B, K D)"
    if dropout_mask is not None:
        if tuple(dropout_mask.shape) != (T, B, dims.width):
            raise _shape_error("dropout_mask", f"{width} = ({T}, {B}, {dims.width})", dropout_mask)
        _check_dtype("dropout_mask", dropout_mask, dims)
    if layer_masks is not None:
        if len(layer_masks) != dims.layers - 1:
            raise ValueError(
                f"layer_masks: expected L - 1 = {dims.layers - 1} arrays, one between each "
                f"two of the {dims.layers} layers; got {len(layer_masks)}"
            )
        for i, m in enumerate(layer_masks):
            if tuple(m.shape) != (T, B, dims.width):
                raise _shape_error(f"layer_masks[{i}]", f"{width} = ({T}, {B}, {dims.width})", m)
            _check_dtype(f"layer_masks[{i}]", m, dims)
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
        what = "0/1 labels for the sigmoid head" if head == "sigmoid" else "real targets for mse"
        if not ok:
            raise _shape_error("targets", f"(T, B, C) = ({T}, {B}, {dims.C}) {what}", targets)
        if head == "mse":
            if not xp.isdtype(targets.dtype, "real floating"):
                raise TypeError(f"targets: mse targets need a floating dtype; got {targets.dtype}")
            _check_dtype("targets", targets, dims)
        elif not (
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


def _h0_parts(model: Any, h0: Any) -> dict[str, Any]:
    """h0 by name: ``{"h0": h0}``, or for a cell whose state has two parts (LSTM's
    (h, c)) ``{"h0[0]": h0, "h0[1]": c0}``; {} for None."""
    if h0 is None:
        return {}
    parts = model.state_parts
    if parts == 1:
        if isinstance(h0, (tuple, list)):
            raise TypeError(
                f"h0: a {model.cell} cell's state is one array; got a {type(h0).__name__}"
            )
        return {"h0": h0}
    if not isinstance(h0, tuple) or len(h0) != parts:
        raise TypeError(
            f"h0: a {model.cell} cell's state is a tuple of {parts} arrays (h0, c0); "
            f"got {type(h0).__name__}"
        )
    return {f"h0[{i}]": part for i, part in enumerate(h0)}


def state_parts(h0: Any) -> tuple[Any, ...]:
    """The arrays of a state: one, or the parts of a tuple (LSTM's (h, c))."""
    return () if h0 is None else tuple(h0) if isinstance(h0, tuple) else (h0,)


def _h0_shape(dims: Dims, B: int) -> tuple[int, ...]:
    cells = dims.layers * dims.directions
    return (B, dims.D) if dims.arch.single else (cells, B, dims.D)


def check_cotangents(
    params: Any, dims: Dims, shape: tuple[int, int], *, dlogits: Any, dstates: Any
) -> None:
    """What a pullback is given: dlogits (T, B, C) and/or dstates (T, B, K D), of the
    parameters' dtype, library and device (nothing is moved)."""
    T, B = shape
    if dlogits is None and dstates is None:
        raise TypeError("pullback: give dlogits (T, B, C), dstates (T, B, K D), or both")
    namespace_of({"params['U']": params["U"], "dlogits": dlogits, "dstates": dstates})
    width = "(T, B, D)" if dims.arch.single else "(T, B, K D)"
    expected = {"dlogits": ("(T, B, C)", (T, B, dims.C)), "dstates": (width, (T, B, dims.width))}
    for name, a in (("dlogits", dlogits), ("dstates", dstates)):
        if a is None:
            continue
        if tuple(a.shape) != expected[name][1]:
            raise _shape_error(name, f"{expected[name][0]} = {expected[name][1]}", a)
        _check_dtype(name, a, dims)


def _value_conditions(
    params: Any, inputs: Any, *, targets: Any, h0: Any, mask: Any, head: str, dims: Dims, xp: Any,
    dropout_masks: dict[str, Any],
) -> list[Any]:  # fmt: skip
    """Every value condition of a call as a 0-d boolean device array (no sync)."""
    conds = [xp.all(xp.isfinite(p)) for p in params.values()]
    conds += [_dropout_ok(m, xp) for m in dropout_masks.values()]
    if inputs.ndim == 2:
        conds.append(xp.all((inputs >= 0) & (inputs < dims.M)))
    else:
        conds.append(xp.all(xp.isfinite(inputs)))
    conds += [xp.all(xp.isfinite(part)) for part in state_parts(h0)]
    if mask is not None:
        if not xp.isdtype(mask.dtype, "bool"):
            conds.append(xp.all((mask == 0) | (mask == 1)))
            mask = mask != 0
        conds.append(xp.any(mask))
    if targets is not None:
        if head == "softmax":
            conds.append(xp.all((targets >= 0) & (targets < dims.C)))
        elif head == "mse":
            conds.append(xp.all(xp.isfinite(targets)))
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
    layer_masks: Any = None,
) -> None:
    """Value checks: ids and targets in range, finite numbers, 0/1 masks, dropout
    multipliers (``dropout_mask``, and a stack's ``layer_masks``) that are 0 or one
    1 / (1 - p).

    All conditions are reduced to one device flag, read once: one host sync per
    call. Only when it is false are the conditions read one by one, to name the
    argument at fault.
    """
    named = {"dropout_mask": dropout_mask}
    named.update({f"layer_masks[{i}]": m for i, m in enumerate(layer_masks or ())})
    dropout_masks = {name: m for name, m in named.items() if m is not None}
    conds = _value_conditions(
        params, inputs, targets=targets, h0=h0, mask=mask, head=head, dims=dims, xp=xp,
        dropout_masks=dropout_masks,
    )  # fmt: skip
    if bool(xp.all(xp.stack(conds))):  # the one host sync of a value check
        return
    for name, m in dropout_masks.items():
        if not bool(_dropout_ok(m, xp)):
            low, high = float(xp.min(m)), float(xp.max(m))
            got = "NaN" if math.isnan(low + high) else f"values from {low!r} to {high!r}"
            raise ValueError(
                f"{name}: expected multipliers 0 (dropped) or one common 1 / (1 - p) in "
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
    if not all(bool(xp.all(xp.isfinite(part))) for part in state_parts(h0)):
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
    elif head == "mse":
        if not bool(xp.all(xp.isfinite(targets))):
            raise ValueError("targets: contains NaN or infinite values")
    elif not xp.isdtype(targets.dtype, "bool"):
        if not bool(xp.all((targets >= 0) & (targets <= 1))):
            raise ValueError("targets: sigmoid targets must lie in [0, 1]")
