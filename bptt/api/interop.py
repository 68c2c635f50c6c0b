"""Parameters to and from ``torch.nn.RNN`` + ``torch.nn.Linear`` state dicts.

torch keeps two biases per cell, ``bias_ih_l{l}`` and ``bias_hh_l{l}``, which only
ever appear summed (z = W_ih x + b_ih + W_hh h + b_hh); bptt keeps their sum, b.
So :func:`from_torch` adds them, and :func:`to_torch` writes b as ``bias_ih`` and
zeros as ``bias_hh``: the same function either way. The names map cell by cell
(:mod:`bptt.math.layers`)::

    weight_ih_l{l}[_reverse]  <->  U{s}        weight_hh_l{l}[_reverse]  <->  W{s}
    bias_ih_l{l}[_reverse] + bias_hh_l{l}[_reverse]  <->  b{s}
    Linear.weight  <->  V        Linear.bias  <->  c

with s = "" for layer 0 forward, "_l{l}" and "_l{l}_reverse" otherwise. torch's
module options follow from the parameters: ``num_layers``, ``bidirectional``,
``bias`` (the RNN's; the Linear's ``bias`` is c); the nonlinearity is the module's
(a bare state dict does not hold it: pass ``cell=``). :func:`from_torch` returns the
model value with the parameters. Both layouts are time-major (``batch_first=False``).

torch is imported only inside these functions. Converting moves data on purpose:
parameters of another library are copied to the host and become CPU tensors;
torch tensors keep their device and dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import backends
from ..math.cells import GATED_MODULES, VANILLA, get_cell
from ..math.layers import Arch, cell_params, suffix
from .checks import check_params
from .params import dtype_name
from .rnn import RNN

__all__ = ["from_torch", "to_torch", "torch_modules"]


def _torch_suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def _to_tensor(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    return torch.from_numpy(np.array(backends.backend_of(x).to_numpy(x), copy=True))


def to_torch(model: RNN, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(rnn_state_dict, linear_state_dict)`` of ``model``'s ``params`` for the torch module
    of its cell (``torch.nn.RNN``, ``GRU`` or ``LSTM``) and ``torch.nn.Linear`` (load them
    with ``load_state_dict``; :func:`torch_modules` builds both modules)."""
    check_params(model, params)
    extra = get_cell(model.cell).extra_biases
    rnn: dict[str, Any] = {}
    for layer, direction in model.arch.cells():
        p = cell_params(params, layer, direction, extra)
        w_ih, w_hh, b_ih, b_hh = _to_torch_cell(model.cell, p)
        t = _torch_suffix(layer, direction)
        rnn.update({f"weight_ih{t}": w_ih, f"weight_hh{t}": w_hh})
        if b_ih is not None:
            rnn.update({f"bias_ih{t}": b_ih, f"bias_hh{t}": b_hh})
    linear = {"weight": _to_tensor(params["V"])}
    if params.get("c") is not None:
        linear["bias"] = _to_tensor(params["c"])
    return rnn, linear


def _to_torch_cell(cell: str, p: Mapping[str, Any]) -> tuple[Any, ...]:
    """One cell's (weight_ih, weight_hh, bias_ih, bias_hh) as tensors: the vanilla cell's
    b as bias_ih with zeros as bias_hh; a gated cell's by its module (eqs. G6, L5)."""
    if cell in VANILLA:
        b = None if p.get("b") is None else _to_tensor(p["b"])
        return _to_tensor(p["U"]), _to_tensor(p["W"]), b, None if b is None else b * 0
    import torch

    host = {k: np.asarray(backends.backend_of(v).to_numpy(v)) for k, v in p.items()
            if v is not None}  # fmt: skip
    like = p["U"] if isinstance(p["U"], torch.Tensor) else None
    out = GATED_MODULES[cell].to_torch_cell(host)
    return tuple(None if a is None else _tensor_like(a, like) for a in out)


def _tensor_like(a: np.ndarray, like: Any) -> Any:
    import torch

    t = torch.from_numpy(np.array(a, copy=True))
    return t if like is None else t.to(device=like.device, dtype=like.dtype)


def _state(module: Any, name: str) -> Mapping[str, Any]:
    state = module.state_dict() if hasattr(module, "state_dict") else module
    if not isinstance(state, Mapping):
        raise TypeError(f"{name}: expected a torch module or its state dict; got {type(module)}")
    return state


def _arch_of_torch(rnn: Mapping[str, Any], gates: int) -> tuple[Arch, bool]:
    if "weight_ih_l0" not in rnn or "weight_hh_l0" not in rnn:
        raise ValueError(
            f"rnn: expected a torch.nn.RNN, GRU or LSTM state dict (weight_ih_l0, weight_hh_l0, "
            f"...); got keys {sorted(rnn)[:6]}"
        )
    rows, D = tuple(rnn["weight_hh_l0"].shape)
    if rows != gates * D:
        raise ValueError(
            f"rnn: weight_hh_l0 has shape {(rows, D)}, not the ({gates} D, D) = "
            f"({gates * D}, {D}) of this cell's {gates} gate(s) (RNN 1, GRU 3, LSTM 4)"
        )
    layers = 1
    while f"weight_hh_l{layers}" in rnn:
        layers += 1
    arch = Arch(layers, 2 if "weight_hh_l0_reverse" in rnn else 1)
    bias = "bias_ih_l0" in rnn
    kinds = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if bias else ())
    expected = {f"{kind}{_torch_suffix(l, d)}" for l, d in arch.cells() for kind in kinds}
    if set(rnn) != expected:
        raise ValueError(
            f"rnn: keys {sorted(set(rnn) ^ expected)} are missing or unexpected for "
            f"{layers} layer(s) of {arch.directions} direction(s)"
        )
    return arch, bias


def from_torch(
    rnn: Any,
    linear: Any,
    *,
    dtype: Any = None,
    backend: str | None = None,
    device: Any = None,
    cell: str | None = None,
    head: str = "softmax",
) -> tuple[RNN, dict[str, Any]]:
    """``(model, params)`` from a ``torch.nn.RNN``, ``GRU`` or ``LSTM`` and a
    ``torch.nn.Linear`` (or their state dicts): the model value (:class:`bptt.RNN`, its
    cell the module's: ``nonlinearity`` for an RNN, ``"gru"``, ``"lstm"``; for a bare
    state dict the gate count of its shapes, and ``cell`` for the RNN's nonlinearity,
    default tanh) and its parameters on ``backend``/``device`` (default NumPy), of
    ``dtype`` (default the tensors'), in the layout's key order. The modules must be
    time-major (``batch_first=False``, torch's default) and without ``proj_size``."""
    for name, module in (("rnn", rnn), ("linear", linear)):
        if getattr(module, "batch_first", False):
            raise ValueError(f"{name}: batch_first=True; bptt's arrays are time-major (T, B, ...)")
        if getattr(module, "proj_size", 0):
            raise ValueError(
                f"{name}: proj_size={module.proj_size}: an LSTM whose h is projected to fewer "
                "units than its cell state is not a cell bptt has (its W would read h of "
                "another size than c); build the LSTM without proj_size"
            )
    r = {k: _numpy(v, f"rnn[{k!r}]") for k, v in _state(rnn, "rnn").items()}
    lin = {k: _numpy(v, f"linear[{k!r}]") for k, v in _state(linear, "linear").items()}
    cell = _cell_of(rnn, r, cell)
    arch, bias = _arch_of_torch(r, get_cell(cell).gates)
    if "weight" not in lin or not set(lin) <= {"weight", "bias"}:
        raise ValueError(
            f"linear: expected a torch.nn.Linear state dict (weight, optional bias); got keys "
            f"{sorted(lin)}" + (f", of which {sorted(set(lin) - {'weight', 'bias'})} are "
                                "unexpected" if "weight" in lin else "")
        )  # fmt: skip
    host: dict[str, np.ndarray] = {}
    for layer, direction in arch.cells():
        s, t = suffix(layer, direction), _torch_suffix(layer, direction)
        w_ih, w_hh = r[f"weight_ih{t}"], r[f"weight_hh{t}"]
        b_ih, b_hh = (r[f"bias_ih{t}"], r[f"bias_hh{t}"]) if bias else (None, None)
        if cell in VANILLA:  # b = bias_ih + bias_hh: only the sum enters
            p = {"U": w_ih, "W": w_hh} | ({"b": b_ih + b_hh} if bias else {})
        else:
            p = GATED_MODULES[cell].from_torch_cell(w_ih, w_hh, b_ih, b_hh)  # eqs. G6, L5
        host.update({f"{key}{s}": value for key, value in p.items()})
    host["V"] = lin["weight"]
    if "bias" in lin:
        host["c"] = lin["bias"]
    model = RNN.from_params(host, cell=cell, head=head)
    dtype = dtype_name(str(host["U"].dtype) if dtype is None else dtype)
    be = backends.get_backend(backend, device)
    be.require_dtype(dtype)
    params = {k: be.asarray(host[k].astype(dtype), dtype=dtype) for k in model.param_names()}
    check_params(model, params)  # the shapes fit together (a Linear for another width fails)
    return model, params


def _cell_of(module: Any, state: Mapping[str, Any], cell: str | None) -> str:
    """The module's cell (torch.nn.RNN's nonlinearity, GRU, LSTM), else the one the state
    dict's gate count names (a vanilla one: ``cell``, default tanh); a ``cell`` that
    disagrees is an error."""
    kind = type(module).__name__
    if kind == "RNN":
        found = module.nonlinearity
    elif kind in ("GRU", "LSTM"):
        found = kind.lower()
    else:  # a state dict: G D rows of weight_hh_l0 for D columns
        w = state.get("weight_hh_l0")
        gates = 0 if w is None or len(w.shape) != 2 else w.shape[0] // max(w.shape[1], 1)
        found = {3: "gru", 4: "lstm"}.get(gates)
        if found is None:
            found = cell or "tanh"
    if cell is not None and found != cell:
        raise ValueError(f"cell: {cell!r}, but the torch module's cell is {found!r}")
    get_cell(found)
    return found


def _numpy(x: Any, name: str) -> np.ndarray:
    """One state-dict entry as a host floating array: a torch tensor (any device that
    can be read; float16 and bfloat16 widened to float32), an array of any array-API
    library, or a (nested) list of numbers. TypeError or ValueError naming the entry."""
    import torch

    if isinstance(x, torch.Tensor):
        if x.device.type == "meta":
            raise ValueError(f"{name}: a tensor on torch's 'meta' device holds no values")
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        host = x.numpy()
    elif backends.is_array(x):
        host = np.asarray(backends.backend_of(x).to_numpy(x))
    elif isinstance(x, (list, tuple)):
        try:
            host = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: a list that is not a rectangular array of numbers "
                             f"({e})") from None  # fmt: skip
    else:
        raise TypeError(f"{name}: expected a tensor, an array or a list of numbers; got "
                        f"{type(x).__name__}")  # fmt: skip
    if host.dtype.kind not in "fiu" or host.dtype == np.bool_:
        raise TypeError(f"{name}: expected real numbers; got dtype {host.dtype}")
    return host if host.dtype.kind == "f" else host.astype(np.float64)


def torch_modules(model: RNN, params: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(torch.nn.RNN, torch.nn.Linear)`` holding ``model``'s ``params``: the same outputs
    as ``model.forward`` (the RNN's output through the Linear gives the logits), of the
    parameters' dtype, on their device if they are torch's."""
    import torch

    rnn_state, linear_state = to_torch(model, params)
    arch = model.arch
    first = rnn_state["weight_ih_l0"]
    D, M = first.shape
    C, width = linear_state["weight"].shape
    kw = {"dtype": first.dtype, "device": first.device}
    stack = dict(num_layers=arch.layers, bias="bias_ih_l0" in rnn_state,
                 bidirectional=arch.directions == 2, **kw)  # fmt: skip
    if model.cell in VANILLA:
        rnn = torch.nn.RNN(M, D, nonlinearity=model.cell, **stack)
    else:
        rnn = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[model.cell](M, D // model.gates, **stack)
    linear = torch.nn.Linear(width, C, bias="bias" in linear_state, **kw)
    rnn.load_state_dict(rnn_state)
    linear.load_state_dict(linear_state)
    return rnn, linear
