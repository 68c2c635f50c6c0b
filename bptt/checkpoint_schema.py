"""What a checkpoint holds, derived from its stored configuration, and the checks of it.

A checkpoint's ``meta`` (one JSON document) holds the configuration; every
array member it may hold, with its shape, follows from that configuration:
:func:`parameter_shapes` is the one place that maps a model configuration to
parameter names and shapes, and :func:`expected_members` adds the optimizer
state (named as :func:`bptt.optim.state_arrays` names it, per parameter), the
carried hidden state and the training history. A file is checked against this
before any array is read, and its values after; a :class:`SchemaError` names
the field at fault.

To add a parameter or a model field (another architecture), extend
``MODEL_FIELDS`` and :func:`parameter_shapes`: the members, their shapes and the
optimizer state's names follow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .cells import CELLS
from .params import INITS

__all__ = [
    "META_KEYS",
    "MODEL_FIELDS",
    "MODEL_REQUIRED",
    "SchemaError",
    "check_meta",
    "expected_members",
    "hidden_shape",
    "is_bias",
    "parameter_shapes",
]

HISTORY = ("train_step", "train_bpc", "val_step", "val_bpc")
META_KEYS = {
    1: {"step", "config", "position", "rng_state", "best", "opt_scalars", "opt_slots"},
    2: {"step", "config", "position", "rng_state", "best"},
}
# Format 1 named an optimizer's per-parameter arrays by slot (opt/m/U): the slot of each
# field of the state (format 2's names), by optimizer.
FORMAT_1_SLOTS = {
    ("adam", "mu"): "m",
    ("adam", "nu"): "v",
    ("sgd", "total"): "velocity",
    ("adagrad", "total"): "sum_sq",
    ("rmsprop", "total"): "mean_sq",
}
NONNEGATIVE = {("adam", "nu"), ("adagrad", "total"), ("rmsprop", "total")}  # sums of squares


class SchemaError(ValueError):
    """``field``: the member or configuration entry at fault; the message says what."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


MODEL_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "M": (lambda v: _int(v, 1), "a positive integer"),
    "D": (lambda v: _int(v, 1), "a positive integer"),
    "C": (lambda v: _int(v, 1), "a positive integer"),
    "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
    "init": (lambda v: v in INITS, f"one of {list(INITS)}"),
    # the architecture (bptt.layers), recorded since stacks: absent means one tanh layer
    "layers": (lambda v: _int(v, 1), "a positive integer"),
    "bidirectional": (lambda v: isinstance(v, bool), "true or false"),
    "nonlinearity": (lambda v: v in CELLS, f"one of {list(CELLS)} (the cell)"),
}
MODEL_REQUIRED = ("M", "D", "C", "dtype", "init")  # what every format version stored
DATA_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "source": (lambda v: isinstance(v, str), "a string"),
    "sha256": (
        lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v) is not None,
        "64 hexadecimal digits",
    ),
    "val_fraction": (lambda v: _real(v) and 0 < v < 1, "a number in (0, 1)"),
    "n_train": (_int, "an integer >= 0"),
    "n_val": (_int, "an integer >= 0"),
}
BACKEND_FIELDS = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "device": (lambda v: isinstance(v, str), "a string"),
}
# The training options each format version always stored (later options have defaults).
TRAIN_KEYS = {
    1: (
        "hidden",
        "seq_len",
        "batch",
        "optimizer",
        "lr",
        "momentum",
        "clip",
        "weight_decay",
        "dropout",
        "lr_decay",
        "lr_decay_every",
        "dtype",
        "init",
        "seed",
        "log_every",
        "eval_every",
        "patience",
        "sample_length",
        "val_streams",
        "val_warmup",
    )
}
TRAIN_KEYS[2] = (*TRAIN_KEYS[1], "l2")


def _arch(model: Mapping[str, Any]) -> Any:
    from .layers import Arch

    return Arch(model.get("layers", 1), 2 if model.get("bidirectional", False) else 1)


def parameter_shapes(model: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The parameters a (checked) model configuration defines, by name, with their
    shapes, in the layout's order (:func:`bptt.layers.param_names`): for one layer
    U (D, M), W (D, D), V (C, D), b (D,), c (C,); for L layers of K directions each
    cell's U{s} (D, M for layer 0, else K D), W{s} (D, D), b{s} (D,), and V (C, K D)."""
    from .layers import param_names, suffix

    M, D, C = model["M"], model["D"], model["C"]
    arch = _arch(model)
    K = arch.directions
    shapes: dict[str, tuple[int, ...]] = {"V": (C, K * D), "c": (C,)}
    for layer, direction in arch.cells():
        s = suffix(layer, direction)
        shapes.update({f"U{s}": (D, M if layer == 0 else K * D), f"W{s}": (D, D), f"b{s}": (D,)})
    return {k: shapes[k] for k in param_names(arch)}


def is_bias(name: str) -> bool:
    """A parameter a model may be stored without: every cell's b and the output's c."""
    return name == "c" or name.startswith("b")


def hidden_shape(model: Mapping[str, Any], batch: int) -> tuple[int, ...]:
    """The carried state: (B, D) for one cell, (L K, B, D) for a stack."""
    arch = _arch(model)
    cells = arch.layers * arch.directions
    return (batch, model["D"]) if cells == 1 else (cells, batch, model["D"])


def _fields(
    section: Any,
    name: str,
    fields: Mapping[str, tuple[Callable, str]],
    required: tuple[str, ...] | None = None,
) -> None:
    if not isinstance(section, dict):
        raise SchemaError(name, f"expected a JSON object; got {type(section).__name__}")
    missing = [k for k in (fields if required is None else required) if k not in section]
    if missing:
        raise SchemaError(name, f"missing key(s) {missing}")
    extra = sorted(k for k in section if k not in fields)
    if extra:
        raise SchemaError(name, f"unknown key(s) {extra}")
    for key, (ok, expected) in fields.items():
        if key in section and not ok(section[key]):
            raise SchemaError(f"{name}.{key}", f"expected {expected}; got {section[key]!r}")


def _train_config(stored: Any, version: int) -> Any:
    """The stored training options as a TrainConfig (every option checked by it)."""
    import dataclasses

    from .train.config import TrainConfig

    known = {f.name: (lambda v: True, "") for f in dataclasses.fields(TrainConfig)}
    _fields(stored, "config.train", known, TRAIN_KEYS[min(version, max(TRAIN_KEYS))])
    try:
        return TrainConfig.from_stored(stored)
    except (ValueError, TypeError) as e:
        name, _, message = str(e).partition(": ")
        raise SchemaError(f"config.train.{name}", message or str(e)) from None


def check_meta(meta: Any, version: int) -> tuple[dict[str, Any], Any]:
    """(the configuration, its TrainConfig), after checking every field of ``meta``
    that does not need the arrays: keys, types, ranges, and that the sections agree."""
    if not isinstance(meta, dict):
        raise SchemaError("meta", f"expected a JSON object; got {type(meta).__name__}")
    keys = META_KEYS.get(version, META_KEYS[max(META_KEYS)])
    missing, extra = sorted(keys - set(meta)), sorted(set(meta) - keys)
    if missing or extra:
        raise SchemaError(
            "meta", f"missing key(s) {missing}" if missing else f"unknown key(s) {extra}"
        )
    config = meta["config"]
    sections = ("model", "train", "data", "backend")
    _fields(
        config, "config", {k: (lambda v: isinstance(v, dict), "a JSON object") for k in sections}
    )
    _fields(config["model"], "config.model", MODEL_FIELDS, MODEL_REQUIRED)
    _fields(config["data"], "config.data", DATA_FIELDS)
    _fields(config["backend"], "config.backend", BACKEND_FIELDS)
    train = _train_config(config["train"], version)
    model = config["model"]
    if model.get("bidirectional", False):
        raise SchemaError(
            "config.model.bidirectional",
            "true, but a training run's model reads the text in one direction",
        )
    stored_model = {"layers": 1, "nonlinearity": "tanh", **model}  # older: one tanh layer
    pairs = (("hidden", "D"), ("dtype", "dtype"), ("init", "init"), ("layers", "layers"),
             ("cell", "nonlinearity"))  # fmt: skip
    for key, mine in pairs:
        if getattr(train, key) != stored_model[mine]:
            raise SchemaError(
                f"config.train.{key}",
                f"{getattr(train, key)!r} differs from config.model.{mine} {stored_model[mine]!r}",
            )
    step = meta["step"]
    if not _int(step):
        raise SchemaError("meta.step", f"expected an integer >= 0; got {step!r}")
    _check_position(meta["position"], train, config["data"]["n_train"])
    _check_best(meta["best"], step)
    _check_rng(meta["rng_state"])
    if version == 1 and not (
        isinstance(meta["opt_scalars"], dict) and _int(meta["opt_scalars"].get("step"))
    ):
        raise SchemaError(
            "meta.opt_scalars", f"expected {{'step': int}}; got {meta['opt_scalars']!r}"
        )
    return config, train


def _check_position(position: Any, train: Any, n_train: int) -> None:
    from .data import Streams

    _fields(
        position,
        "meta.position",
        {k: (_int, "an integer >= 0") for k in ("epoch", "chunk", "offset")},
    )
    chunks = Streams(n_train, train.batch, train.seq_len).chunks
    if chunks < 1:
        raise SchemaError(
            "config.data.n_train",
            f"{n_train} characters make no chunk of "
            f"--batch {train.batch} and --seq-len {train.seq_len}",
        )
    for key, bound in (("chunk", chunks), ("offset", train.seq_len)):
        if position[key] >= bound:
            raise SchemaError(
                f"meta.position.{key}", f"{position[key]} is out of range: expected [0, {bound})"
            )


def _check_best(best: Any, step: int) -> None:
    fields = {
        "best_val": (lambda v: v is None or _real(v), "a finite number or null"),
        "best_step": (
            lambda v: v is None or (_int(v) and v <= step),
            f"null or a step in [0, {step}]",
        ),
        "evals_since": (_int, "an integer >= 0"),
    }
    _fields(best, "meta.best", fields)
    if (best["best_val"] is None) != (best["best_step"] is None):
        raise SchemaError("meta.best", "best_val and best_step must both be set or both null")


def _check_rng(state: Any) -> None:
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise SchemaError("meta.rng_state", f"not a NumPy generator state ({e})") from None


def _optimizer_leaves(train: Any) -> dict[str, bool]:
    """{path: whether the leaf is laid out like the flat parameters} of the optimizer's state."""
    from . import optim

    stand_in = np.zeros(3)  # (3,): any length tells a per-parameter leaf from a scalar
    state = train.make_optimizer().init(stand_in)
    return {path: tuple(leaf.shape) == (3,) for path, leaf in optim.state_arrays(state).items()}


def expected_members(
    config: Mapping[str, Any], train: Any, version: int, names: set[str]
) -> dict[str, tuple[tuple[int, ...] | None, str]]:
    """{member: (shape or None, kind)} of a checkpoint of ``config``, for the stored
    ``names``; kind is "param", "opt", "opt+" (>= 0), "count", "hidden" or "history".
    Raises SchemaError for a member the format does not define or a missing one."""
    shapes = parameter_shapes(config["model"])
    if not any(f"param/{k}" in names for k in shapes if is_bias(k)):
        shapes = {k: v for k, v in shapes.items() if not is_bias(k)}
    out: dict[str, tuple[tuple[int, ...] | None, str]] = {
        f"param/{k}": (shape, "param") for k, shape in shapes.items()
    }
    out["hidden"] = (hidden_shape(config["model"], train.batch), "hidden")
    for path, per_param in _optimizer_leaves(train).items():
        field = path.rsplit("/", 1)[-1]
        kind = "opt+" if (train.optimizer, field) in NONNEGATIVE else "opt"
        if version == 1:
            slot = FORMAT_1_SLOTS.get((train.optimizer, field))
            if per_param and slot is not None:
                out.update({f"opt/{slot}/{k}": (s, kind) for k, s in shapes.items()})
        elif per_param:
            out.update({f"opt/{path}/{k}": (s, kind) for k, s in shapes.items()})
        else:
            out[f"opt/{path}"] = ((), "count" if field == "count" else "opt")
    out.update({f"history/{k}": (None, "history") for k in HISTORY if f"history/{k}" in names})
    fixed = {"format_version", "vocab", "meta"}
    unknown = sorted(names - set(out) - fixed)
    if unknown:
        raise SchemaError(
            unknown[0],
            "not a member of a bptt checkpoint of this configuration"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
        )
    missing = [k for k in out if k not in names]
    if missing:
        raise SchemaError(missing[0], "missing from the file")
    return out
