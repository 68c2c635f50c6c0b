"""Checkpoints: a run's state in one ``.npz`` file, checked on load against a template.

Arrays are stored as ``param/W``, ``opt/1/1/mu/W`` (:func:`bptt.optim.state_arrays`'s
paths; leaves laid out like the flat parameters are stored per parameter), ``hidden``,
``history/val_bpc`` and ``vocab``; the rest is one JSON document, ``meta``: the step, the
data position, the generator state, the best record and the configuration, stored once:
``model`` (:meth:`bptt.RNN.config`), ``train`` (the :class:`TrainConfig` options that are
not the model's), ``data`` and ``backend``. Nothing is pickled; a write goes to a
temporary file that is fsynced and renamed over the target.

Loading builds, from the stored configuration, the template a new run builds (the
model's parameter shapes, the optimizer's ``init``, the carried state) and compares each
member's name, shape and dtype from the ``.npy`` headers before any data is read, each
read bounded; values are checked only for what holds of every model: finite, second
moments (``nu``, ``sum_of_squares``) >= 0, counts whole in [0, step]. Formats 1 and 2
(the model and the options apart and overlapping; format 1 named optimizer arrays by
slot, format 2 named three transforms' fields "total") load into the same objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import optim
from ..api.rnn import RNN
from ..host import limits
from ..math.flat import Layout
from ..math.layers import arch_of
from ..text.data import Streams
from .config import TrainConfig
from .rundir import BEST, LATEST, CheckpointError, check_writable, remove_stale_temporaries
from .state import HISTORY_KEYS, RunState
from .step import TrainCarry

__all__ = ["BEST", "FORMAT_VERSION", "LATEST", "MODEL_OPTIONS", "Checkpoint", "CheckpointError",
           "check_writable", "load_checkpoint", "peek_meta", "remove_stale_temporaries",
           "resolve_path", "run_from_checkpoint", "run_to_checkpoint", "save_checkpoint",
           "template"]  # fmt: skip

FORMAT_VERSION = 3  # 2: optimizer arrays by path; 3: the configuration stored once
# The TrainConfig options that are the model's fields (stored once, in config.model).
MODEL_OPTIONS = {"hidden": "hidden_size", "layers": "layers", "cell": "cell", "init": "initializer",
                 "init_scale": "init_scale"}  # the options the model holds  # fmt: skip
META_MAX_BYTES = 16 << 20  # the JSON document
SQUARES = ("nu", "sum_of_squares")  # the state fields that are sums or means of squares
OLD_SLOTS = {"mu": ("m",), "nu": ("v", "mean_sq"), "trace": ("velocity",),
             "sum_of_squares": ("sum_sq",)}  # format 1's slot for each field  # fmt: skip
OLD_MODEL = {"M": "input_size", "D": "hidden_size", "C": "output_size", "init": "initializer",
             "layers": "layers", "bidirectional": "bidirectional",
             "nonlinearity": "cell"}  # format 1 and 2's config.model  # fmt: skip


class _Bad(ValueError):
    """What is wrong with ``field`` (a member or a configuration entry; None: the file)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Checkpoint:
    """A run's state as host data: ``params`` {name: array}, ``opt_state`` {path: array}
    (per parameter: ``"1/1/mu/W"``), ``hidden`` (:meth:`bptt.RNN.carry_shape` of the
    batch), ``position`` {"epoch", "chunk", "offset"}, ``rng_state``, ``history`` (1-d),
    ``best`` and ``config`` {"model", "train", "data", "backend"} (format 3's layout)."""

    params: dict[str, np.ndarray]
    opt_state: dict[str, Any]
    vocab: str
    step: int
    config: dict[str, Any]
    hidden: np.ndarray | None = None
    position: dict[str, int] = field(default_factory=dict)
    rng_state: dict[str, Any] | None = None
    history: dict[str, np.ndarray] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)  # best_val, best_step, evals_since
    format_version: int = FORMAT_VERSION

    @property
    def model(self) -> RNN:
        return RNN.from_config(self.config["model"])

    @property
    def train(self) -> TrainConfig:
        """The run's options: the stored ones and the model's (hidden, layers, cell, init)."""
        model = {k: self.config["model"][v] for k, v in MODEL_OPTIONS.items()}
        return TrainConfig(**self.config["train"], **model)

    @property
    def architecture(self) -> dict[str, Any]:
        m = self.model
        return {"layers": m.layers, "bidirectional": m.bidirectional, "nonlinearity": m.cell}

    @property
    def sizes(self) -> dict[str, int]:
        """M, D and C of the stored parameters, and their number of layers."""
        (C, _), (_, M), (_, D) = (self.params[k].shape for k in ("V", "U", "W"))  # W: (G D, D)
        return {"M": int(M), "D": int(D), "C": int(C), "layers": arch_of(self.params).layers}

    def check_sizes(self, **expected: int | None) -> None:
        """CheckpointError unless the stored M/D/C/layers match ``expected`` (None: anything)."""
        names = {"M": "vocabulary (M)", "D": "hidden size (D)", "C": "output size (C)",
                 "layers": "number of layers"}  # fmt: skip
        for key, value in expected.items():
            if value is not None and self.sizes[key] != value:
                raise CheckpointError(
                    f"checkpoint: the model has {names[key]} {self.sizes[key]}, but {value} was "
                    "asked for; a checkpoint can only resume a model of the same size"
                )


def resolve_path(path: str | os.PathLike, *, which: str = LATEST) -> Path:
    """A checkpoint file, or a checkpoint directory's ``which`` file."""
    p = Path(path)
    return p / which if p.is_dir() else p


# ---- the template: what a run of a configuration holds ------------------------------------


def template(model: RNN, train: TrainConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{member: (shape, dtype)} of a run's arrays, built as a new run builds them: the
    model's parameters, the optimizer's ``init`` (on host zeros of the flat size), the
    carried state of the whole batch."""
    dtype, shapes = np.dtype(train.dtype), model.param_shapes()
    n = sum(math.prod(s) for s in shapes.values())
    out = {f"param/{k}": (s, dtype) for k, s in shapes.items()}
    for path, leaf in optim.state_arrays(train.make_optimizer().init(np.zeros(n, dtype))).items():
        if leaf.shape == (n,):
            out.update({f"opt/{path}/{k}": (s, dtype) for k, s in shapes.items()})
        else:
            out[f"opt/{path}"] = (leaf.shape, leaf.dtype)
    out["hidden"] = (model.carry_shape(train.batch), dtype)
    return out


def _check_values(name: str, array: np.ndarray, step: int) -> None:
    """What holds of every model: finite; nu and sum_of_squares >= 0; counts whole in [0, step]."""
    if not np.all(np.isfinite(array)):
        raise _Bad(name, "contains NaN or infinite values")
    squares = [f for f in name.split("/")[-2:] if f in SQUARES]
    if squares and np.any(array < 0):
        raise _Bad(name, f"negative entries; {squares[0]} is a sum or mean of squares (>= 0)")
    if name.endswith("/count") and not (array == np.round(array) and 0 <= array <= step):
        raise _Bad(name, f"an update count must be a whole number in [0, {step}]; got "
                         f"{float(array)}")  # fmt: skip


# ---- the configuration: checked by constructing what it describes --------------------------


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _section(value: Any, where: str, keys: Any, required: Any = None) -> dict[str, Any]:
    """``value`` if it is a JSON object with the ``required`` keys (default: all ``keys``)
    and no others; ``keys`` may map each key to (test, expected in words)."""
    if not isinstance(value, dict):
        raise _Bad(where, f"expected a JSON object; got {type(value).__name__}")
    missing = sorted(set(keys if required is None else required) - set(value))
    unknown = sorted(set(value) - set(keys))
    if missing or unknown:
        raise _Bad(where, f"missing key(s) {missing}" if missing else f"unknown key(s) {unknown}")
    for key, (ok, expected) in keys.items() if isinstance(keys, dict) else ():
        if not ok(value[key]):
            raise _Bad(f"{where}.{key}", f"expected {expected}; got {value[key]!r}")
    return value


def _make(cls: Any, values: dict[str, Any], where: str) -> Any:
    """``cls(**values)``: the dataclass checks its fields; its error names ``where.field``."""
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        name, _, message = str(e).partition(": ")
        raise _Bad(f"{where}.{name}", message) from None


def _config(config: Any, version: int) -> tuple[dict[str, Any], RNN, TrainConfig]:
    """(the configuration in format 3's layout, its model, its TrainConfig)."""
    text = (lambda v: isinstance(v, str), "a string")
    config = _section(config, "config", ("model", "train", "data", "backend"))
    _section(config["data"], "config.data", {
        "source": text, "n_train": (_int, "an integer >= 0"), "n_val": (_int, "an integer >= 0"),
        "sha256": (lambda v: re.fullmatch("[0-9a-f]{64}", str(v)), "64 hexadecimal digits"),
        "val_fraction": (lambda v: type(v) in (int, float) and 0 < v < 1,
                         "a number in (0, 1)")})  # fmt: skip
    _section(config["backend"], "config.backend", {"name": text, "device": text})
    options = {f.name for f in dataclasses.fields(TrainConfig)}
    if version >= 3:
        fields = {f.name for f in dataclasses.fields(RNN)}
        stored = _section(config["model"], "config.model", fields)
        model = _make(RNN, stored, "config.model")
        stored = _section(config["train"], "config.train", options - set(MODEL_OPTIONS))
        make = TrainConfig
    else:  # the model and the options apart, overlapping: the model is config.model's
        stored = _section(config["model"], "config.model", {*OLD_MODEL, "dtype"}, ("M", "D", "C"))
        model = _make(RNN, {OLD_MODEL[k]: v for k, v in stored.items() if k != "dtype"},
                      "config.model")  # fmt: skip
        stored = _section(config["train"], "config.train", options | {"nonlinearity"},
                          options - {"l2", "layers", "cell", "init_scale", "remat"})  # fmt: skip
        make, stored = TrainConfig.from_stored, {"stored": stored}  # format 1's decay: l2
    train = _make(make, {**stored, **{k: getattr(model, v) for k, v in MODEL_OPTIONS.items()}},
                  "config.train")  # fmt: skip
    kept = {k: v for k, v in dataclasses.asdict(train).items() if k not in MODEL_OPTIONS}
    return {**config, "model": model.config(), "train": kept}, model, train


def _check_meta(meta: Any, version: int) -> tuple[dict[str, Any], RNN, TrainConfig]:
    """(the configuration, its model, its TrainConfig) after checking every field of meta."""
    old = {"opt_scalars", "opt_slots"} if version == 1 else set()
    meta = _section(meta, "meta", {"step", "config", "position", "rng_state", "best", *old})
    step = meta["step"]
    if not _int(step):
        raise _Bad("meta.step", f"expected an integer >= 0; got {step!r}")
    if old:  # format 1: the update count
        _section(meta["opt_scalars"], "meta.opt_scalars", {"step": (_int, "an integer >= 0")})
    config, model, train = _config(meta["config"], version)
    position = _section(meta["position"], "meta.position",
                        dict.fromkeys(("epoch", "chunk", "offset"),
                                      (_int, "an integer >= 0")))  # fmt: skip
    chunks = Streams(config["data"]["n_train"], train.batch, train.seq_len).chunks
    for key, bound in (("chunk", chunks), ("offset", train.seq_len)):
        if position[key] >= bound:
            raise _Bad(f"meta.position.{key}",
                       f"{position[key]} is out of range: expected [0, {bound})")  # fmt: skip
    best = _section(meta["best"], "meta.best", {
        "best_val": (lambda v: v is None or (type(v) in (int, float) and math.isfinite(v)),
                     "a finite number or null"),
        "best_step": (lambda v: v is None or (_int(v) and v <= step),
                      f"null or a step in [0, {step}]"),
        "evals_since": (_int, "an integer >= 0")})  # fmt: skip
    if (best["best_val"] is None) != (best["best_step"] is None):
        raise _Bad("meta.best", "best_val and best_step must both be set or both null")
    try:
        np.random.default_rng().bit_generator.state = meta["rng_state"]
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise _Bad("meta.rng_state", f"not a NumPy generator state ({e})") from None
    return config, model, train


# ---- the archive: members one at a time, each .npy header read before its data ------------


def _damage(e: Exception) -> str:
    text = str(e)
    if isinstance(e, zlib.error) or "CRC" in text or "Bad magic" in text:
        return f"is corrupt ({text}); use another checkpoint"
    if isinstance(e, (zipfile.BadZipFile, EOFError)):
        return (f"is truncated (an incomplete .npz archive: {text}); it was probably cut off "
                "while being copied; use another checkpoint")  # fmt: skip
    return f"is corrupt ({text})"


@contextlib.contextmanager
def _archive(path: Path) -> Iterator[tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]]:
    """(the open ``.npz`` of a regular file, {member name: its record}); nothing read yet."""
    with limits.open_regular(path, what="checkpoint") as (f, _):
        if f.read(4) != b"PK\x03\x04":
            raise _Bad(None, "is not a bptt checkpoint (not an .npz archive)")
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise _Bad(None, _damage(e)) from None
        with zf:  # a member not named *.npy is "not a member" of any template
            names = {info.filename.removesuffix(".npy"): info for info in zf.infolist()}
            if len(names) != len(zf.infolist()):
                raise _Bad(None, "is corrupt (a member stored twice)")
            yield zf, names


def _check(name: str, shape: tuple, dtype: np.dtype, want: tuple) -> None:
    """A member's shape and dtype against ``want`` = (shape, None for any 1-d; a test of
    the dtype; the dtype in words; the most bytes it may hold, or None)."""
    if dtype.hasobject or not want[1](dtype):
        raise _Bad(name, f"expected {want[2]}; the file declares dtype {dtype}")
    if len(shape) != 1 if want[0] is None else tuple(shape) != tuple(want[0]):
        expected = "a 1-d array" if want[0] is None else f"shape {tuple(want[0])}"
        raise _Bad(name, f"expected {expected} from the configuration; the file declares "
                         f"{tuple(shape)}")  # fmt: skip


def _expect(member: str, shape: tuple, dtype: np.dtype) -> tuple:
    """What :func:`_check` wants of a template member: its shape, and its dtype (a 0-d
    optimizer leaf, a count or a norm, as the writing device had it: float32 or float64)."""
    floats = (np.float32, np.float64) if shape == () and member.startswith("opt/") else (dtype,)
    return shape, lambda d: d in floats, f"{dtype} (config.train.dtype)", None


def _read(z: Any, name: str, want: tuple, data: bool = True) -> Any:
    """Member ``name`` of ``z`` (an :func:`_archive`), read after its header passed
    :func:`_check` and its size the archive's record of it (``data=False``: nothing
    past the header is read)."""
    (zf, names), max_bytes = z, want[3]
    if name not in names:
        raise _Bad(name, "missing from the file")
    try:
        with zf.open(names[name]) as stream:
            version = np.lib.format.read_magic(stream)
            if version != (1, 0):  # a header of at most 64 KiB (savez writes no other)
                raise _Bad(name, f"is corrupt (an .npy header of version {version}, not 1.0)")
            stored, _, dtype = np.lib.format.read_array_header_1_0(stream)
            _check(name, stored, dtype, want)
            nbytes, header = math.prod(stored) * dtype.itemsize, stream.tell()
            if max_bytes is not None and nbytes > max_bytes:
                size, most = limits.format_size(nbytes), limits.format_size(max_bytes)
                raise _Bad(name, f"declares {size}, more than the {most} this field may hold")
            if names[name].file_size != header + nbytes:
                raise _Bad(name, f"declares {nbytes} bytes of data but the archive holds "
                                 f"{names[name].file_size - header}")  # fmt: skip
        if data:  # exactly the size checked: reading to the end also checks the CRC
            with zf.open(names[name]) as stream:
                return np.lib.format.read_array(stream, allow_pickle=False)
    except _Bad as e:
        e.field = e.field or name
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError) as e:
        raise _Bad(name, _damage(e)) from None
    return None


def _scalar(z: Any, name: str, kinds: str, what: str, max_bytes: int | None = None) -> Any:
    """A 0-d member of a dtype kind in ``kinds`` (``what``, in words)."""
    return _read(z, name, ((), lambda d: d.kind in kinds, what, max_bytes))[()]


# ---- loading ------------------------------------------------------------------------------


def _meta(z: Any) -> tuple[int, dict[str, Any]]:
    """The format version and the JSON document, read within bounds (not yet checked)."""
    if "format_version" not in z[1] or "meta" not in z[1]:
        raise _Bad(None, "is not a bptt checkpoint (no format_version)")
    version = int(_scalar(z, "format_version", "iu", "an integer"))
    if version > FORMAT_VERSION:
        raise _Bad(None, f"has format version {version}, written by a newer bptt; this "
                         f"bptt reads versions up to {FORMAT_VERSION}: upgrade bptt to load "
                         "it")  # fmt: skip
    if version < 1:
        raise _Bad("format_version", f"expected 1 to {FORMAT_VERSION}; got {version}")
    try:
        return version, json.loads(str(_scalar(z, "meta", "U", "text", META_MAX_BYTES)))
    except (json.JSONDecodeError, RecursionError) as e:
        raise _Bad("meta", f"not a JSON document ({e})") from None


def _vocabulary(z: Any, model: RNN, train: TrainConfig) -> str:
    """The stored vocabulary (M distinct characters, sorted), and the model a training run
    of ``train`` builds on it is ``model``."""
    M = model.input_size
    vocab = str(_scalar(z, "vocab", "U", "text", 4 * M))
    if len(vocab) != M:
        raise _Bad("vocab", f"{len(vocab)} characters for config.model.input_size = {M}")
    points = np.frombuffer(vocab.encode("utf-32-le"), dtype=np.uint32)
    if np.any(points[1:] <= points[:-1]):
        raise _Bad("vocab", "the characters must be distinct and sorted (ids index them)")
    ours = train.model(M)  # the model a training run of these options builds
    for key, expected in ours.config().items():
        if getattr(model, key) != expected:
            got = getattr(model, key)
            raise _Bad(f"config.model.{key}", f"expected {expected!r}, as a training run "
                                              f"builds it; got {got!r}")  # fmt: skip
    try:  # what loading holds at most: the parameters, two moments, the carried state
        n = sum(math.prod(s) for s in model.param_shapes().values())
        nbytes = np.dtype(train.dtype).itemsize * (
            3 * n + math.prod(model.carry_shape(train.batch))
        )
        limits.require_memory(nbytes, f"its arrays (D = {model.hidden_size})")
    except limits.TooLargeError as e:
        raise _Bad("config.model", str(e)) from None
    return vocab


def _old_name(member: str, per_param: bool, version: int, names: Any) -> str | None:
    """The name a format-1 or 2 file gave template ``member``; None for what format 1 kept
    in meta (the counts: opt_scalars.step) or not at all (the clip's last norm)."""
    if version >= 3 or member in names or not member.startswith("opt/"):
        return member
    parts = member.split("/")
    if version == 2:  # trace, sum_of_squares and RMSProp's nu were one SumState's "total"
        return "/".join([*parts[:-2], "total", parts[-1]]) if per_param else member
    slots = [f"opt/{s}/{parts[-1]}" for s in OLD_SLOTS.get(parts[-2], ())] if per_param else []
    return next((s for s in slots if s in names), member if per_param else None)


def _members(z: Any, want: dict, version: int, meta: dict) -> dict[str, np.ndarray]:
    """{template member or history: array}: every name and header checked first, then
    each member read and its values checked."""
    step, names = meta["step"], z[1]
    stored = {m: _old_name(m, shape != (), version, names) for m, (shape, _) in want.items()}
    expect = {f"history/{k}": (None, lambda d: d == np.float64, "float64", 8 * (step + 2))
              for k in HISTORY_KEYS if f"history/{k}" in names}  # fmt: skip
    unknown = sorted(set(names) - {*stored.values(), *expect, "format_version", "meta", "vocab"})
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise _Bad(unknown[0], "not a member of a bptt checkpoint of this configuration" + more)
    missing = [name for name in stored.values() if name is not None and name not in names]
    if missing:
        raise _Bad(missing[0], "missing from the file")
    expect |= {name: _expect(m, *want[m]) for m, name in stored.items() if name is not None}
    for name, expected in expect.items():  # every header before any data
        _read(z, name, expected, data=False)
    arrays = {name: _read(z, name, expected) for name, expected in expect.items()}
    for name, array in arrays.items():
        _check_values(name, array, step)
    for a, b in (("train_step", "train_bpc"), ("val_step", "val_bpc")):
        x, y = (arrays.get(f"history/{k}", np.zeros(0)) for k in (a, b))
        if x.shape != y.shape:
            raise _Bad(f"history/{b}", f"{len(y)} entries for {len(x)} steps")
    old = {"count": np.asarray(meta.get("opt_scalars", {}).get("step", 0), np.float64)}
    return {m: arrays[n] if n else old.get(m.rsplit("/", 1)[-1], np.zeros((), want[m][1]))
            for m, n in stored.items()} | {k: arrays[k] for k in arrays
                                           if k.startswith("history/")}  # fmt: skip


def _parts(arrays: dict[str, Any], *prefixes: str) -> list[dict[str, Any]]:
    """{name: array} of the members under each prefix, the prefix removed."""
    return [{k[len(p) :]: v for k, v in arrays.items() if k.startswith(p)} for p in prefixes]


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file (or a directory's ``latest.npz``) as host data, checked
    against the template of its stored configuration; a :class:`CheckpointError` naming
    the file and the field otherwise, raised before a large or unexpected member is read."""
    p = resolve_path(path)
    name = repr(str(p))
    try:
        with _archive(p) as z:
            version, meta = _meta(z)
            config, model, train = _check_meta(meta, version)
            vocab = _vocabulary(z, model, train)
            arrays = _members(z, template(model, train), version, meta)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint: no such file: {name}") from None
    except _Bad as e:
        raise CheckpointError(f"checkpoint: {name}: {e.field}: {e}" if e.field else
                              f"checkpoint: {name} {e}") from None  # fmt: skip
    except limits.NotRegularFileError as e:
        raise CheckpointError(str(e)) from None
    except OSError as e:
        raise CheckpointError(f"checkpoint: cannot read {name}: {e.strerror or e}") from None
    params, opt, history = _parts(arrays, "param/", "opt/", "history/")
    return Checkpoint(params, opt, vocab, meta["step"], config, arrays["hidden"], meta["position"],
                      meta["rng_state"], history, meta["best"], version)  # fmt: skip


def peek_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """A checkpoint's JSON document, its arrays unread; None if it is not readable."""
    try:
        with _archive(Path(path)) as z:
            meta = _meta(z)[1]
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


# ---- writing ------------------------------------------------------------------------------


def _arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    meta = {"step": int(ckpt.step), "config": ckpt.config, "position": ckpt.position,
            "rng_state": ckpt.rng_state, "best": ckpt.best}  # fmt: skip
    out = {"format_version": np.asarray(FORMAT_VERSION, dtype=np.int64), "hidden": ckpt.hidden,
           "vocab": np.asarray(ckpt.vocab, dtype=np.str_),
           "meta": np.asarray(json.dumps(meta), dtype=np.str_)}  # fmt: skip
    parts = {"param": ckpt.params, "opt": ckpt.opt_state, "history": ckpt.history}
    out |= {f"{prefix}/{k}": v for prefix, part in parts.items() for k, v in part.items()}
    return {k: np.asarray(v) for k, v in out.items()}


def _readable(arrays: dict[str, np.ndarray]) -> None:
    """_Bad unless :func:`load_checkpoint` would accept ``arrays``: its meta, and the names,
    shapes and dtypes of its members against the template."""
    _, model, train = _check_meta(json.loads(str(arrays["meta"])), FORMAT_VERSION)
    want = template(model, train)
    have = {k for k in arrays if k.startswith(("param/", "opt/")) or k == "hidden"}
    if have != set(want):
        raise _Bad(sorted(have ^ set(want))[0], "is not in both the arrays and the template")
    for name, expected in want.items():
        _check(name, arrays[name].shape, arrays[name].dtype, _expect(name, *expected))


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temporary file, fsync, rename), after
    checking it against its template (what cannot be read back is never written). On a
    failure (a full disk, a signal) ``path`` keeps its contents; the OSError propagates."""
    target, arrays = Path(path), _arrays(ckpt)
    try:
        _readable(arrays)
    except _Bad as e:
        message = f"checkpoint: refusing to write {str(target)!r}: {e.field}: {e}"
        raise CheckpointError(message) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.{os.getpid()}."  # the pid: see rundir.remove_stale_temporaries
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:  # including KeyboardInterrupt: never leave a half file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename made durable, where the system can
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target


# ---- a run's state and back ---------------------------------------------------------------


def run_to_checkpoint(run: RunState, *, config: dict, vocab: str, backend: Any) -> Checkpoint:
    """Host copy of a :class:`RunState` (device arrays in one transfer per dtype);
    optimizer leaves laid out like the flat parameters are stored per parameter."""
    xp, layout, carry = backend.xp, run.layout, run.carry
    device = {f"param/{k}": v for k, v in layout.unflatten(carry.params, xp).items()}
    for path, leaf in optim.state_arrays(carry.opt_state).items():
        if tuple(leaf.shape) == (layout.size,):
            device.update({f"opt/{path}/{k}": v for k, v in layout.unflatten(leaf, xp).items()})
        else:
            device[f"opt/{path}"] = leaf
    host = backend.to_numpy_many({**device, "hidden": carry.hidden})
    history = {k: np.asarray(v, dtype=np.float64) for k, v in run.history.items()}
    position = {"epoch": run.epoch, "chunk": run.chunk, "offset": run.offset}
    return Checkpoint(*_parts(host, "param/", "opt/"), vocab, run.step, config, host["hidden"],
                      position, run.rng.bit_generator.state, history, dict(run.best))  # fmt: skip


def run_from_checkpoint(ckpt: Checkpoint, *, optimizer: Any, backend: Any, dtype: str) -> RunState:
    """The :class:`RunState` saved in ``ckpt``, on ``backend``: ``optimizer.init``'s state
    filled from the stored arrays (a CheckpointError names one missing or misshapen)."""
    layout = Layout.of(ckpt.params)

    def flat(get: Any) -> np.ndarray:  # (N,)
        return np.concatenate([np.asarray(get(k)).reshape(-1) for k in layout.keys])

    def load(path: str, _: Any, like: Any) -> Any:
        if tuple(like.shape) == (layout.size,):
            stored = flat(lambda k: ckpt.opt_state[f"{path}/{k}"])
        else:
            stored = np.asarray(ckpt.opt_state[path])
        if stored.shape != tuple(like.shape):
            raise CheckpointError(f"checkpoint: optimizer array {path!r} has shape "
                                  f"{stored.shape}, expected {tuple(like.shape)}")  # fmt: skip
        return backend.asarray(stored, dtype=like.dtype)

    params = backend.asarray(flat(ckpt.params.__getitem__), dtype=dtype)
    state = optimizer.init(params)
    try:
        opt_state = optim.state_from_arrays(state, dict.fromkeys(optim.state_arrays(state)), load)
    except KeyError as e:
        raise CheckpointError(f"checkpoint: no optimizer array {e.args[0]!r}: it was written "
                              "for another optimizer; resume with the original "
                              "--optimizer") from None  # fmt: skip
    rng = np.random.default_rng()
    rng.bit_generator.state = ckpt.rng_state
    counter = backend.xp.full((), ckpt.step, dtype=backend.integer, device=backend.device)
    carry = TrainCarry(params, opt_state, backend.asarray(ckpt.hidden, dtype=dtype), counter)
    history = {k: [float(x) for x in ckpt.history.get(k, ())] for k in HISTORY_KEYS}
    epoch, chunk, offset = (int(ckpt.position[k]) for k in ("epoch", "chunk", "offset"))
    return RunState(carry, layout, rng, ckpt.step, epoch, chunk, offset, history, dict(ckpt.best))
