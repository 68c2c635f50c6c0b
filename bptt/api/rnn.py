"""The model value: what a network is, held beside its parameters.

>>> import bptt
>>> model = bptt.RNN(65, 128, 65, cell="relu", layers=2)
>>> params = model.init(seed=0, dtype="float64")
>>> sorted(model.param_shapes())[:3]
['U', 'U_l1', 'V']

An :class:`RNN` is a frozen, hashable dataclass, like an Equinox module's static
fields or a torch module's constructor arguments: the cell, the layers, the
directions, the biases and the head. It builds its parameters (:meth:`RNN.init`), is
the template they are checked against (:meth:`RNN.param_shapes`), and runs them
(:meth:`RNN.forward`, :meth:`RNN.loss_and_grad`, :meth:`RNN.vjp`,
:meth:`RNN.gradcheck`), each a pure function of its arguments; under ``jax.jit`` a
model is a static value (close over it, or mark it static). Everything that consumes
a trained network (sampling, evaluation, diagnostics, checkpoints, the trainer,
torch interop) takes the model with the parameters, so nothing is told twice.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..math.cells import CELLS, get_cell
from ..math.heads import HEADS
from ..math.layers import Arch, arch_of, param_names, suffix
from . import calls as api
from . import pullback
from .params import INITS, draw

__all__ = ["INITIALIZERS", "RNN"]

INITIALIZERS = INITS


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 1:
        raise ValueError(f"{name}: expected a positive integer; got {value!r}")
    return int(value)


def _one_of(name: str, value: Any, allowed: Any) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}; got {value!r}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False; got {value!r}")


@dataclass(frozen=True)
class RNN:
    """A recurrent network: M inputs, D hidden units per cell, C outputs.

    ``cell``: ``"tanh"`` or ``"relu"`` (eqs. 19-20, B17), ``"gru"`` (eqs. G1-G5) or
    ``"lstm"`` (eqs. L1-L4; its state is the pair (h, c)); ``layers`` L stacked layers,
    each reading the one below (eq. B19); ``bidirectional``: a second cell per layer
    running on reversed time (eq. B21), K = 2 directions; ``bias``: the cells' b and
    the output's c; ``head``: the output and its loss, ``"softmax"`` (class ids),
    ``"sigmoid"`` (0/1 labels) or ``"mse"`` (real targets); ``initializer``: how
    :meth:`init` draws the matrices (``"uniform"``, ``"xavier"``, ``"orthogonal"``,
    ``"identity"``: IRNN, W = ``init_scale`` I, :func:`bptt.api.params.draw`);
    ``init_scale``: the factor on W for ``"identity"`` and ``"orthogonal"``;
    ``output_bias``: the output's c (None: as ``bias``; torch's ``Linear`` may differ).
    """

    input_size: int
    hidden_size: int
    output_size: int
    cell: str = "tanh"
    layers: int = 1
    bidirectional: bool = False
    bias: bool = True
    head: str = "softmax"
    initializer: str = "uniform"
    output_bias: bool | None = None
    init_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.output_bias is None:
            object.__setattr__(self, "output_bias", self.bias)
        for name in ("input_size", "hidden_size", "output_size", "layers"):
            object.__setattr__(self, name, _positive(name, getattr(self, name)))
        _one_of("cell", self.cell, CELLS)
        _one_of("head", self.head, HEADS)
        _one_of("initializer", self.initializer, INITIALIZERS)
        _flag("bidirectional", self.bidirectional)
        _flag("bias", self.bias)
        _flag("output_bias", self.output_bias)
        scale = self.init_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < 1e6:
            raise ValueError(f"init_scale: expected a positive number; got {scale!r}")
        object.__setattr__(self, "init_scale", float(scale))

    # -- what the model is ------------------------------------------------------------

    @property
    def arch(self) -> Arch:
        """L layers of K directions (:class:`bptt.math.layers.Arch`)."""
        return Arch(self.layers, 2 if self.bidirectional else 1)

    @property
    def directions(self) -> int:
        return self.arch.directions

    @property
    def state_parts(self) -> int:
        """The arrays of a cell's state: 1, or 2 for LSTM's (h, c) (h0 is then a pair)."""
        return get_cell(self.cell).state_parts

    @property
    def gates(self) -> int:
        """G: the gate blocks each cell's U, W and b stack (1 for tanh and relu)."""
        return get_cell(self.cell).gates

    @property
    def single_vanilla(self) -> bool:
        """One tanh or relu layer of one direction: the only model NumPy's overlapped
        schedule runs (``single=`` of :func:`bptt.execution.schedules.resolve`)."""
        return self.arch.single and self.gates == 1

    def param_names(self) -> tuple[str, ...]:
        """Every parameter's key, in the layout's order (:func:`bptt.math.layers.param_names`)."""
        return tuple(name for name, _ in _template(self))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape, keyed and ordered as :meth:`param_names`: the template
        parameters are checked against (eqs. 27-29 for each cell; layer l > 0 reads K D)."""
        return dict(_template(self))

    def state_shape(self, batch: int) -> tuple[int, ...]:
        """h0's shape (and that of each part of a two-part state): (B, D) for one cell,
        (L K, B, D) for a stack."""
        cells = self.layers * self.directions
        D = self.hidden_size
        return (batch, D) if self.arch.single else (cells, batch, D)

    def carry_shape(self, batch: int) -> tuple[int, ...]:
        """The state a training run carries between chunks as ONE array: h0's shape, with
        a leading axis of the state's parts for LSTM ((2, ...): h, then c)."""
        shape = self.state_shape(batch)
        return shape if self.state_parts == 1 else (self.state_parts, *shape)

    def pack_state(self, state: Any, xp: Any) -> Any:
        """A state as :meth:`carry_shape` holds it: itself, or its parts stacked."""
        return state if self.state_parts == 1 else xp.stack(state)

    def unpack_state(self, carried: Any) -> Any:
        """:meth:`pack_state` undone: h0 as the model takes it (None stays None)."""
        if carried is None or self.state_parts == 1:
            return carried
        return tuple(carried[i, ...] for i in range(self.state_parts))

    def config(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (what a checkpoint stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RNN:
        """The model a :meth:`config` dict describes (unknown keys are refused)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(
                f"model: unknown field(s) {unknown}; expected some of {sorted(fields)}"
            )
        return cls(**config)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **fields: Any) -> RNN:
        """The model whose template ``params`` fits, with the other ``fields`` (``cell``,
        ``head``, ...) as given: sizes, layers, directions and biases are read from the
        keys and shapes; missing or unknown keys are refused, naming them."""
        return _infer(params, fields)

    def replace(self, **changes: Any) -> RNN:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    # -- building and running ---------------------------------------------------------

    def init(
        self, *, seed: int = 0, dtype: Any = "float32", backend: str | None = None,
        device: Any = None,
    ) -> dict[str, Any]:  # fmt: skip
        """New parameters for this model: drawn in float64 on the host from ``seed``
        (:meth:`initializer`), then cast and moved once to ``backend``/``device``
        (:func:`bptt.backends.get_backend`). One seed gives the same values on every
        backend."""
        return draw(self, seed=seed, dtype=dtype, backend=backend, device=device)

    def forward(self, params: Any, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        """:func:`bptt.forward` of this model."""
        return api.forward(self, params, inputs, **kwargs)

    def loss_and_grad(
        self, params: Any, inputs: Any, targets: Any, **kwargs: Any
    ) -> tuple[Any, dict[str, Any], Any]:
        """:func:`bptt.loss_and_grad` of this model (its head)."""
        return api.loss_and_grad(self, params, inputs, targets, **kwargs)

    def vjp(self, params: Any, inputs: Any, **kwargs: Any) -> Any:
        """:func:`bptt.vjp` of this model."""
        return pullback.vjp(self, params, inputs, **kwargs)

    def gradcheck(self, params: Any, inputs: Any, targets: Any, **kwargs: Any) -> float:
        """:func:`bptt.gradcheck` of this model."""
        return api.gradcheck(self, params, inputs, targets, **kwargs)


@functools.cache
def _template(model: RNN) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(name, shape) of every parameter of ``model``, in the layout's order: made once per
    model value (a frozen dataclass is its own cache key)."""
    M, D, C, G = model.input_size, model.hidden_size, model.output_size, model.gates
    extra = get_cell(model.cell).extra_biases
    width = model.directions * D
    shapes: dict[str, tuple[int, ...]] = {"V": (C, width), "c": (C,)}
    for layer, direction in model.arch.cells():
        s = suffix(layer, direction)
        shapes[f"U{s}"] = (G * D, M if layer == 0 else width)
        shapes[f"W{s}"] = (G * D, D)
        shapes[f"b{s}"] = (G * D,)
        shapes.update({f"{name}{s}": (D,) for name in extra})
    names = param_names(model.arch, bias=model.bias, output_bias=model.output_bias,
                        extra_biases=extra)  # fmt: skip
    return tuple((key, shapes[key]) for key in names)


def _infer(params: Any, fields: dict[str, Any]) -> RNN:
    """:meth:`RNN.from_params`: layers from ``W_l{l}`` (counted up while present), two
    directions when ``W_l0_reverse`` is there, M and D from U, C from V, biases from b."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of arrays; got {type(params).__name__}")
    arch = _widest(params, arch_of(params))
    cell = get_cell(fields.get("cell", "tanh"))
    needed = param_names(arch, bias=False)
    missing = [k for k in needed if params.get(k) is None]
    if missing:
        raise ValueError(f"params: missing key(s) {missing}; expected {_expected(arch, cell)}")
    known = param_names(arch, bias=True, extra_biases=cell.extra_biases)
    extra = [k for k in params if k not in known]
    if extra:
        raise ValueError(f"params: unknown key(s) {extra}; expected {_expected(arch, cell)}")
    biases = [k for k in known if k not in needed and k != "c"]
    present = [params.get(k) is not None for k in biases]
    if any(present) and not all(present):
        raise ValueError(f"params: give every cell's bias ({biases}) or none; some are missing")
    for key in ("U", "V"):
        if getattr(params[key], "ndim", None) != 2:
            shape = tuple(getattr(params[key], "shape", ()))
            raise ValueError(f"params['{key}']: expected a matrix; got shape {shape}")
    G_D, M = params["U"].shape  # (G D, M): the other shapes are checked against U's
    D = int(G_D) // cell.gates
    inferred = dict(
        input_size=int(M), hidden_size=D, output_size=int(params["V"].shape[0]),
        layers=arch.layers, bidirectional=arch.directions == 2, bias=all(present),
        output_bias=params.get("c") is not None,
    )  # fmt: skip
    return RNN(**{**inferred, **fields})


def _widest(keys: Any, arch: Arch) -> Arch:
    """The architecture every cell key names (``U_l2`` implies 3 layers, a ``_reverse``
    key two directions), when that names fewer keys missing than ``arch`` names unknown:
    a missing ``W_l1`` is named missing, not every key of the layers above it unknown."""
    layers, reverse = arch.layers, arch.directions == 2
    for key in keys:
        if not isinstance(key, str) or key[:1] not in ("U", "W", "b") or key[1:2] != "_":
            continue
        layer, _, rest = key[1:].removeprefix("_l").partition("_")
        if layer.isdigit() and rest in ("", "reverse"):
            layers, reverse = max(layers, int(layer) + 1), reverse or rest == "reverse"
        elif key[1:] == "_reverse":
            reverse = True
    widest = Arch(layers, 2 if reverse else 1)
    missing = [k for k in param_names(widest, bias=False) if keys.get(k) is None]
    unknown = [k for k in keys if k not in param_names(arch, extra_biases=("b_hn",))]
    return widest if missing and len(missing) <= len(unknown) else arch


def _expected(arch: Arch, cell: Any) -> str:
    if arch.single and not cell.extra_biases:
        return "U, W, V and optional b, c"
    names = ", ".join(param_names(arch, bias=False))
    return (
        f"{names} and optional biases for {arch.layers} layer(s) of {arch.directions} direction(s)"
    )
