"""Checkpoints: one portable NumPy ``.npz`` file, no pickle, written atomically.

A checkpoint holds host (NumPy) copies of everything a run needs to continue
exactly: parameters, optimizer state, vocabulary, step, data position, carried
hidden state, the generator state, the configuration and the training history.
Arrays are stored as ``param/U``, ``opt/m/U``, ``hidden``, ``history/val_bpc``;
everything else is one JSON document (``meta``). Loading never unpickles, so a
checkpoint written on a GPU loads on a CPU and the reverse.

Writing goes to a temporary file in the same directory, which is flushed,
fsynced and then renamed over the target (``os.replace``, atomic on POSIX and
Windows): a run killed mid-write leaves the previous checkpoint intact. A
temporary file carries its writer's process id (``.latest.npz.<pid>.<random>.tmp``);
one left behind by a killed run (SIGKILL, power loss) is removed by the next
:func:`check_writable` on that directory, which every training run calls at start,
once no live process has that id (POSIX; elsewhere such files are left alone).
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import limits
from .checkpoint_read import Archive, ArchiveError
from .checkpoint_schema import SchemaError, check_meta, expected_members
from .rnn import RNN

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "check_writable",
    "directory_error",
    "load_checkpoint",
    "peek_meta",
    "process_alive",
    "remove_stale_temporaries",
    "resolve_path",
    "run_from_checkpoint",
    "run_to_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 2  # 2: optimizer state as named paths (bptt.optim.state_arrays)
LATEST, BEST = "latest.npz", "best.npz"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt, too new or of another model size."""


@dataclass
class Checkpoint:
    """Everything needed to resume a run, as host data.

    ``params``: {"U": (D, M), "W": (D, D), "V": (C, D)[, "b": (D,), "c": (C,)]}, or a
    stack's keys (:func:`bptt.layers.param_names`; the architecture is also recorded
    in ``config["model"]``: ``layers``, ``bidirectional``, ``nonlinearity``);
    ``opt_state``: {path: array} as :func:`bptt.optim.state_arrays` names the
    optimizer state's arrays (format 1: {"step": (), "m/U": ..., ...});
    ``hidden``: (B, D) the state carried into the next chunk ((L, B, D) for L layers);
    ``position``: {"epoch", "chunk", "offset"} of the next chunk; ``rng_state``:
    the NumPy generator's ``bit_generator.state``; ``history``: 1-d arrays
    (``train_step``, ``train_bpc``, ``val_step``, ``val_bpc``).
    """

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
    def sizes(self) -> dict[str, int]:
        """M, D and C of the stored parameters, and their number of layers."""
        from .layers import arch_of

        D, M = self.params["U"].shape
        layers = arch_of(self.params).layers
        return {"M": int(M), "D": int(D), "C": int(self.params["V"].shape[0]), "layers": layers}

    @property
    def architecture(self) -> dict[str, Any]:
        """``layers``, ``bidirectional`` and ``nonlinearity`` of the stored model (a
        checkpoint written before they were recorded: 1, False, "tanh")."""
        from .layers import arch_of

        arch = arch_of(self.params)
        model = (self.config or {}).get("model", {})
        return {"layers": arch.layers, "bidirectional": arch.directions == 2,
                "nonlinearity": model.get("nonlinearity", "tanh")}  # fmt: skip

    @property
    def model(self) -> RNN:
        """The stored model (:class:`bptt.RNN`): sizes from the parameters, the cell, layers
        and directions as recorded (a checkpoint written before they were: one tanh layer)."""
        arch = self.architecture
        init = (self.config or {}).get("model", {}).get("init", "uniform")
        scale = (self.config or {}).get("train", {}).get("init_scale", 1.0)
        return RNN.from_params(self.params, cell=arch["nonlinearity"], initializer=init,
                               init_scale=scale)  # fmt: skip

    def check_sizes(self, **expected: int | None) -> None:
        """CheckpointError unless the stored M/D/C/layers match ``expected`` (None: anything)."""
        sizes = self.sizes
        names = {"M": "vocabulary (M)", "D": "hidden size (D)", "C": "output size (C)",
                 "layers": "number of layers"}  # fmt: skip
        for key, value in expected.items():
            if value is not None and sizes[key] != value:
                raise CheckpointError(
                    f"checkpoint: the model has {names[key]} {sizes[key]}, but {value} was "
                    "asked for; a checkpoint can only resume a model of the same size"
                )


def resolve_path(path: str | os.PathLike, *, which: str = LATEST) -> Path:
    """A checkpoint file, or a checkpoint directory's ``which`` file."""
    p = Path(path)
    return p / which if p.is_dir() else p


def directory_error(action: str, path: Path, e: OSError) -> str:
    """``checkpoint-dir: cannot write to ...`` saying what the system's error means here:
    a full disk, a path through a file, a directory that takes no files (/proc)."""
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the disk is full or over quota: free space or use another --checkpoint-dir)"
    elif e.errno == errno.ENOTDIR:
        blocker = next((a for a in (path, *path.parents) if a.exists() and not a.is_dir()), None)
        if blocker is not None:
            reason = f"{str(blocker)!r} is not a directory"
    elif e.errno == errno.ENOENT and path.is_dir():
        reason = ("the directory exists but takes no new files (a virtual filesystem such as "
                  f"/proc or /sys?); the system said: {reason}")  # fmt: skip
    elif e.errno in (errno.EROFS,):
        reason += " (a read-only filesystem)"
    return f"checkpoint-dir: cannot {action} {str(path)!r}: {reason}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (POSIX; elsewhere True: it cannot be tested safely)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours (EPERM)
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary checkpoint and probe files whose writing process is gone.

    Only names this module writes (``.<name>.npz.<pid>.<random>.tmp``,
    ``.probe.<pid>.<random>.tmp``) are touched, and only on POSIX, where a
    process id can be tested without side effects. Returns what was removed.
    """
    if os.name != "posix":
        return []
    removed = []
    for f in Path(directory).glob(".*.tmp"):
        parts = f.name.split(".")
        ours = f.name.startswith(".probe.") or ".npz." in f.name
        if ours and len(parts) >= 5 and parts[-3].isdigit() and not process_alive(int(parts[-3])):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def check_writable(directory: str | os.PathLike, *, nbytes: int = 4096) -> Path:
    """Create ``directory`` and prove ``nbytes`` can be written there, before any training.

    Writes and fsyncs a probe file of ``nbytes`` (pass what the checkpoints will
    need, so that a nearly full disk is found now, not at the first save), then
    deletes it and any temporary files left by killed runs
    (:func:`remove_stale_temporaries`). Raises :class:`CheckpointError`.
    """
    d = Path(directory)
    block = b"\0" * min(nbytes, 1 << 20)
    try:
        d.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(d)
        prefix = f".probe.{os.getpid()}."
        with tempfile.NamedTemporaryFile(dir=d, prefix=prefix, suffix=".tmp") as f:
            left = max(nbytes, 1)
            while left > 0:
                left -= f.write(block[:left])
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise CheckpointError(directory_error("write to", d, e)) from None
    return d


def _arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    out = {"format_version": np.asarray(FORMAT_VERSION, dtype=np.int64)}
    out["vocab"] = np.asarray(ckpt.vocab, dtype=np.str_)
    for key, value in ckpt.params.items():
        out[f"param/{key}"] = np.asarray(value)
    for path, array in ckpt.opt_state.items():
        out[f"opt/{path}"] = np.asarray(array)
    if ckpt.hidden is not None:
        out["hidden"] = np.asarray(ckpt.hidden)
    for key, value in ckpt.history.items():
        out[f"history/{key}"] = np.asarray(value)
    meta = {
        "step": int(ckpt.step),
        "config": ckpt.config,
        "position": ckpt.position,
        "rng_state": ckpt.rng_state,
        "best": ckpt.best,
    }
    out["meta"] = np.asarray(json.dumps(meta), dtype=np.str_)
    return out


def _check_writable_contents(ckpt: Checkpoint, arrays: dict[str, np.ndarray], target: Path) -> None:
    """CheckpointError unless :func:`load_checkpoint` would accept what is about to be
    written (its configuration and the names and shapes of its members): a checkpoint
    that cannot be read back is never written."""
    meta = {"step": ckpt.step, "config": ckpt.config, "position": ckpt.position,
            "rng_state": ckpt.rng_state, "best": ckpt.best}  # fmt: skip
    try:
        config, train = check_meta(json.loads(json.dumps(meta)), FORMAT_VERSION)
        names = {k for k in arrays if k not in ("format_version", "vocab", "meta")}
        members = expected_members(config, train, FORMAT_VERSION, names | {"meta"})
        for name, (shape, _) in members.items():
            if shape is not None and tuple(arrays[name].shape) != shape:
                raise SchemaError(name, f"shape {arrays[name].shape}, expected {shape}")
    except (SchemaError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint: refusing to write {str(target)!r}: {e}") from None


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temporary file, fsync, rename).

    On any failure (a full disk, a signal) the temporary file is removed and
    ``path`` keeps its previous contents; the OSError propagates.
    """
    target = Path(path)
    arrays = _arrays(ckpt)
    _check_writable_contents(ckpt, arrays, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.{os.getpid()}."  # the pid: see remove_stale_temporaries
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
    try:  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return target
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(dir_fd)
    return target


META_MAX_BYTES = 16 << 20  # the JSON document: configuration, positions, generator state


def _float_kind(dtype: np.dtype) -> bool:
    return dtype.kind == "f" and dtype.itemsize in (4, 8)


def _read_arrays(z: Any, members: dict, dtype: str, step: int) -> dict[str, np.ndarray]:
    """Every expected member, each read only after its header matched, then its values
    checked for what holds of every model: finite; sums of squares >= 0; counts whole
    numbers in [0, step]; histories 1-d (a state's range is the cell's: relu's is
    unbounded, so none is assumed)."""
    out = {}
    for name, (shape, kind) in members.items():
        if kind == "history":
            array = z.read(name, None, lambda d: d == np.float64, "float64",
                           max_bytes=8 * (step + 2))  # fmt: skip
            if array.ndim != 1:
                raise SchemaError(name, f"expected a 1-d array; got shape {array.shape}")
        elif kind == "count":
            array = z.read(name, shape, _float_kind, "float32 or float64")
        else:
            array = z.read(name, shape, lambda d: d == np.dtype(dtype), f"{dtype} (config.model)")
        if not np.all(np.isfinite(array)):
            raise SchemaError(name, "contains NaN or infinite values")
        if kind == "opt+" and np.any(array < 0):
            raise SchemaError(name, "a sum of squares with negative entries")
        if kind == "count" and not (array == np.round(array) and 0 <= array <= step):
            raise SchemaError(name, f"an update count must be a whole number in [0, {step}]; "
                              f"got {float(array)}")  # fmt: skip
        out[name] = array
    for a, b in (("train_step", "train_bpc"), ("val_step", "val_bpc")):
        ka, kb = f"history/{a}", f"history/{b}"
        if ka in out and kb in out and out[ka].shape != out[kb].shape:
            raise SchemaError(kb, f"{out[kb].shape[0]} entries for {out[ka].shape[0]} steps")
    return out


def _vocabulary(z: Any, M: int) -> str:
    """The stored vocabulary: M distinct characters in sorted order (ids index it)."""
    vocab = str(z.read("vocab", (), lambda d: d.kind == "U", "text", max_bytes=4 * M))
    if len(vocab) != M:
        raise SchemaError("vocab", f"{len(vocab)} characters for config.model.M = {M}")
    points = np.frombuffer(vocab.encode("utf-32-le"), dtype=np.uint32)
    if np.any(points[1:] <= points[:-1]):
        raise SchemaError("vocab", "the characters must be distinct and sorted (ids index them)")
    return vocab


def _load(z: Any, p: Path) -> Checkpoint:
    if "format_version" not in z.names or "meta" not in z.names:
        raise CheckpointError(
            f"checkpoint: {str(p)!r} is not a bptt checkpoint (no format_version)"
        )
    version = int(z.read("format_version", (), lambda d: d.kind in "iu", "an integer"))
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint: {str(p)!r} has format version {version}, written by a newer bptt; "
            f"this bptt reads versions up to {FORMAT_VERSION}: upgrade bptt to load it"
        )
    if version < 1:
        raise SchemaError("format_version", f"expected 1 to {FORMAT_VERSION}; got {version}")
    text = str(z.read("meta", (), lambda d: d.kind == "U", "text", max_bytes=META_MAX_BYTES))
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise SchemaError("meta", f"not a JSON document ({e})") from None
    config, train = check_meta(meta, version)
    members = expected_members(config, train, version, set(z.names))
    itemsize = np.dtype(train.dtype).itemsize
    nbytes = sum(math.prod(shape) * itemsize for shape, _ in members.values() if shape)
    try:
        limits.require_memory(nbytes, f"its arrays (D = {config['model']['D']})")
    except limits.TooLargeError as e:
        raise SchemaError("config.model", str(e)) from None
    vocab = _vocabulary(z, config["model"]["M"])
    arrays = _read_arrays(z, members, train.dtype, meta["step"])
    opt_state = {k[len("opt/") :]: v for k, v in arrays.items() if k.startswith("opt/")}
    if version == 1:  # {"step": int} in the metadata, slots as opt/m/U, ...
        opt_state["step"] = np.asarray(meta["opt_scalars"]["step"], dtype=np.float64)
    return Checkpoint(
        params={k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")},
        opt_state=opt_state,
        vocab=vocab,
        step=meta["step"],
        config=config,
        hidden=arrays["hidden"],
        position=meta["position"],
        rng_state=meta["rng_state"],
        history={k[len("history/") :]: v for k, v in arrays.items() if k.startswith("history/")},
        best=meta["best"],
        format_version=version,
    )


def peek_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON document of a checkpoint (its step, configuration, best record) without
    reading its arrays; None if it is not a readable checkpoint."""
    try:
        with Archive(Path(path)) as z:
            if int(z.read("format_version", (), lambda d: d.kind in "iu", "an integer")) < 1:
                return None
            text = z.read("meta", (), lambda d: d.kind == "U", "text", max_bytes=META_MAX_BYTES)
            meta = json.loads(str(text))
    except (OSError, ValueError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file (or a directory's ``latest.npz``) as host data.

    Only a regular file is read, and only the members the format defines for the
    stored configuration (:mod:`bptt.checkpoint_schema`), each after its header
    showed the shape and dtype that configuration implies; every value is then
    checked. Anything else is a :class:`CheckpointError` naming the file and the
    field, before a large or unexpected member is read.
    """
    p = resolve_path(path)
    name = repr(str(p))
    try:
        with Archive(p) as z:
            return _load(z, p)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint: no such file: {name}") from None
    except ArchiveError as e:
        where = f"{name}: {e.field}:" if e.field else name
        raise CheckpointError(f"checkpoint: {where} {e}") from None
    except SchemaError as e:
        raise CheckpointError(f"checkpoint: {name}: {e}") from None
    except limits.NotRegularFileError as e:
        raise CheckpointError(str(e)) from None
    except OSError as e:
        raise CheckpointError(f"checkpoint: cannot read {name}: {e.strerror or e}") from None


# ---- a run's state and back --------------------------------------------------------


def run_to_checkpoint(run: Any, *, config: dict[str, Any], vocab: str, backend: Any) -> Checkpoint:
    """Host copy of a :class:`bptt.train.state.RunState`, parameter by parameter (the
    device arrays in one transfer per dtype). Optimizer arrays laid out like the flat
    parameters are stored per parameter too (``opt/1/1/mu/W``), so a checkpoint does
    not depend on the layout."""
    from . import optim

    xp, layout, carry = backend.xp, run.layout, run.carry
    device = {f"param/{k}": v for k, v in layout.unflatten(carry.params, xp).items()}
    for path, leaf in optim.state_arrays(carry.opt_state).items():
        if tuple(leaf.shape) == (layout.size,):
            device.update({f"opt/{path}/{k}": v for k, v in layout.unflatten(leaf, xp).items()})
        else:
            device[f"opt/{path}"] = leaf
    device["hidden"] = carry.hidden
    host = backend.to_numpy_many(device)
    return Checkpoint(
        params={k[len("param/") :]: v for k, v in host.items() if k.startswith("param/")},
        opt_state={k[len("opt/") :]: v for k, v in host.items() if k.startswith("opt/")},
        vocab=vocab,
        step=run.step,
        config=config,
        hidden=host["hidden"],
        position={"epoch": run.epoch, "chunk": run.chunk, "offset": run.offset},
        rng_state=run.rng.bit_generator.state,
        history={k: np.asarray(v, dtype=np.float64) for k, v in run.history.items()},
        best=dict(run.best),
    )


# Format 1 named an optimizer's arrays by slot: the field each slot is now.
_FORMAT_1_SLOTS = {"mu": ("m",), "nu": ("v",), "total": ("velocity", "sum_sq", "mean_sq")}


def _stored_array(ckpt: Checkpoint, path: str) -> Any:
    """The array a checkpoint holds for the optimizer state leaf at ``path``
    (format 1: found by its old slot name); KeyError if it holds none."""
    if ckpt.format_version > 1:
        return ckpt.opt_state[path]
    parts = path.split("/")
    if parts[-1] == "count":
        return ckpt.opt_state["step"]
    if parts[-1] == "norm":  # a clip's record of the last norm: not kept in format 1
        return np.zeros((), dtype=np.asarray(ckpt.params["U"]).dtype)
    if len(parts) >= 2:
        for slot in _FORMAT_1_SLOTS.get(parts[-2], ()):
            if f"{slot}/{parts[-1]}" in ckpt.opt_state:
                return ckpt.opt_state[f"{slot}/{parts[-1]}"]
    raise KeyError(path)


def _host_flat(arrays: Any, layout: Any) -> np.ndarray:
    """Named host arrays joined in the layout's order (N,)."""
    return np.concatenate([np.asarray(arrays(k)).reshape(-1) for k in layout.keys])


def run_from_checkpoint(ckpt: Checkpoint, *, optimizer: Any, backend: Any, dtype: str) -> Any:
    """The :class:`bptt.train.state.RunState` saved in ``ckpt``, on ``backend``.

    ``optimizer`` gives the state's shape (its ``init`` over the flat parameters);
    every stored array is checked against it. Raises :class:`CheckpointError` naming
    a missing or misshapen array.
    """
    from . import optim
    from .flat import Layout
    from .train.state import HISTORY_KEYS, RunState
    from .train.step import TrainCarry

    layout = Layout.of(ckpt.params)
    flat = backend.asarray(_host_flat(ckpt.params.__getitem__, layout), dtype=dtype)  # (N,)

    def load(path: str, _: Any, like: Any) -> Any:
        if tuple(like.shape) == (layout.size,):
            stored = _host_flat(lambda k: _stored_array(ckpt, f"{path}/{k}"), layout)
        else:
            stored = np.asarray(_stored_array(ckpt, path))
        if tuple(stored.shape) != tuple(like.shape):
            raise CheckpointError(
                f"checkpoint: optimizer array {path!r} has shape {stored.shape}, "
                f"expected {tuple(like.shape)}"
            )
        return backend.asarray(stored, dtype=like.dtype)

    try:
        opt_state = optim.state_from_arrays(optimizer.init(flat), _Everything(), load)
    except KeyError as e:
        raise CheckpointError(
            f"checkpoint: no optimizer array {e.args[0]!r}: it was written for another "
            "optimizer; resume with the original --optimizer"
        ) from None
    rng = np.random.default_rng()
    rng.bit_generator.state = ckpt.rng_state
    hidden = backend.asarray(ckpt.hidden, dtype=dtype)
    counter = backend.xp.full((), ckpt.step, dtype=backend.integer, device=backend.device)
    return RunState(
        carry=TrainCarry(flat, opt_state, hidden, counter),
        layout=layout,
        rng=rng,
        step=ckpt.step,
        epoch=int(ckpt.position["epoch"]),
        chunk=int(ckpt.position["chunk"]),
        offset=int(ckpt.position["offset"]),
        history={k: [float(x) for x in ckpt.history.get(k, ())] for k in HISTORY_KEYS},
        best=dict(ckpt.best),
    )


class _Everything(dict):
    """A mapping that has every key (``load`` finds each array itself)."""

    def __getitem__(self, key: str) -> None:
        return None
