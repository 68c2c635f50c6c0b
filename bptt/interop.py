"""Parameters to and from ``torch.nn.RNN`` + ``torch.nn.Linear`` state dicts.

torch keeps two biases per cell, ``bias_ih_l{l}`` and ``bias_hh_l{l}``, which only
ever appear summed (z = W_ih x + b_ih + W_hh h + b_hh); bptt keeps their sum, b.
So :func:`from_torch` adds them, and :func:`to_torch` writes b as ``bias_ih`` and
zeros as ``bias_hh``: the same function either way. The names map cell by cell
(:mod:`bptt.layers`)::

    weight_ih_l{l}[_reverse]  <->  U{s}        weight_hh_l{l}[_reverse]  <->  W{s}
    bias_ih_l{l}[_reverse] + bias_hh_l{l}[_reverse]  <->  b{s}
    Linear.weight  <->  V        Linear.bias  <->  c

with s = "" for layer 0 forward, "_l{l}" and "_l{l}_reverse" otherwise. torch's
module options follow from the parameters: ``num_layers``, ``bidirectional``,
``bias`` (the RNN's; the Linear's ``bias`` is c); the nonlinearity is not stored in a
state dict and is given. Both layouts are time-major (``batch_first=False``).

torch is imported only inside these functions. Converting moves data on purpose:
parameters of another library are copied to the host and become CPU tensors;
torch tensors keep their device and dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import backends
from .checks import check_params
from .layers import Arch, arch_of, param_names, suffix
from .model import NONLINEARITIES
from .params import dtype_name

__all__ = ["from_torch", "to_torch", "torch_modules"]


def _torch_suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


def _to_tensor(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    return torch.from_numpy(np.array(backends.backend_of(x).to_numpy(x), copy=True))


def to_torch(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(rnn_state_dict, linear_state_dict)`` for ``torch.nn.RNN`` and ``torch.nn.Linear``
    (load them with ``load_state_dict``; :func:`torch_modules` builds both modules)."""
    dims = check_params(params)
    arch = dims.arch
    rnn: dict[str, Any] = {}
    for layer, direction in arch.cells():
        s, t = suffix(layer, direction), _torch_suffix(layer, direction)
        rnn[f"weight_ih{t}"] = _to_tensor(params[f"U{s}"])
        rnn[f"weight_hh{t}"] = _to_tensor(params[f"W{s}"])
        if params.get(f"b{s}") is not None:
            rnn[f"bias_ih{t}"] = _to_tensor(params[f"b{s}"])  # b = bias_ih + bias_hh
            rnn[f"bias_hh{t}"] = rnn[f"bias_ih{t}"] * 0
    linear = {"weight": _to_tensor(params["V"])}
    if params.get("c") is not None:
        linear["bias"] = _to_tensor(params["c"])
    return rnn, linear


def _state(module: Any, name: str) -> Mapping[str, Any]:
    state = module.state_dict() if hasattr(module, "state_dict") else module
    if not isinstance(state, Mapping):
        raise TypeError(f"{name}: expected a torch module or its state dict; got {type(module)}")
    return state


def _arch_of_torch(rnn: Mapping[str, Any]) -> tuple[Arch, bool]:
    if "weight_ih_l0" not in rnn or "weight_hh_l0" not in rnn:
        raise ValueError(
            f"rnn: expected a torch.nn.RNN state dict (weight_ih_l0, weight_hh_l0, ...); got "
            f"keys {sorted(rnn)[:6]}"
        )
    rows, D = tuple(rnn["weight_hh_l0"].shape)
    if rows != D:
        raise ValueError(
            f"rnn: weight_hh_l0 has shape {(rows, D)}, not the (D, D) of a torch.nn.RNN (an "
            "LSTM or a GRU stacks 4 or 3 gates): bptt's cell is the vanilla RNN"
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
) -> dict[str, Any]:
    """bptt parameters from a ``torch.nn.RNN`` and a ``torch.nn.Linear`` (or their state
    dicts), on ``backend``/``device`` (default NumPy), of ``dtype`` (default the
    tensors'), in the layout's key order (:func:`bptt.layers.param_names`). The
    modules must be time-major (``batch_first=False``, torch's default) and without
    ``proj_size``."""
    for name, module in (("rnn", rnn), ("linear", linear)):
        if getattr(module, "batch_first", False):
            raise ValueError(f"{name}: batch_first=True; bptt's arrays are time-major (T, B, ...)")
        if getattr(module, "proj_size", 0):
            raise ValueError(f"{name}: proj_size is an LSTM option; expected a torch.nn.RNN")
    r = {k: _numpy(v, f"rnn[{k!r}]") for k, v in _state(rnn, "rnn").items()}
    lin = {k: _numpy(v, f"linear[{k!r}]") for k, v in _state(linear, "linear").items()}
    arch, bias = _arch_of_torch(r)
    if "weight" not in lin or not set(lin) <= {"weight", "bias"}:
        raise ValueError(
            f"linear: expected a torch.nn.Linear state dict (weight, optional bias); got keys "
            f"{sorted(lin)}" + (f", of which {sorted(set(lin) - {'weight', 'bias'})} are "
                                "unexpected" if "weight" in lin else "")
        )  # fmt: skip
    host: dict[str, np.ndarray] = {}
    for layer, direction in arch.cells():
        s, t = suffix(layer, direction), _torch_suffix(layer, direction)
        host[f"U{s}"] = r[f"weight_ih{t}"]
        host[f"W{s}"] = r[f"weight_hh{t}"]
        if bias:
            host[f"b{s}"] = r[f"bias_ih{t}"] + r[f"bias_hh{t}"]
    host["V"] = lin["weight"]
    if "bias" in lin:
        host["c"] = lin["bias"]
    names = param_names(arch, bias=bias, output_bias="bias" in lin)
    dtype = dtype_name(str(host["U"].dtype) if dtype is None else dtype)
    be = backends.get_backend(backend, device)
    be.require_dtype(dtype)
    params = {k: be.asarray(host[k].astype(dtype), dtype=dtype) for k in names}
    check_params(params)  # the shapes fit together (a Linear for another width fails here)
    return params


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


def torch_modules(params: Mapping[str, Any], *, nonlinearity: str = "tanh") -> tuple[Any, Any]:
    """``(torch.nn.RNN, torch.nn.Linear)`` holding ``params``: same outputs as
    :func:`bptt.forward` with this ``nonlinearity`` (the RNN's output through the Linear
    gives the logits), of the parameters' dtype, on their device if they are torch's."""
    import torch

    if nonlinearity not in NONLINEARITIES:
        raise ValueError(
            f"nonlinearity: expected one of {list(NONLINEARITIES)}; got {nonlinearity!r}"
        )
    rnn_state, linear_state = to_torch(params)
    arch = arch_of(params)
    first = rnn_state["weight_ih_l0"]
    D, M = first.shape
    C, width = linear_state["weight"].shape
    kw = {"dtype": first.dtype, "device": first.device}
    rnn = torch.nn.RNN(M, D, num_layers=arch.layers, nonlinearity=nonlinearity,
                       bias="bias_ih_l0" in rnn_state, bidirectional=arch.directions == 2,
                       **kw)  # fmt: skip
    linear = torch.nn.Linear(width, C, bias="bias" in linear_state, **kw)
    rnn.load_state_dict(rnn_state)
    linear.load_state_dict(linear_state)
    return rnn, linear
