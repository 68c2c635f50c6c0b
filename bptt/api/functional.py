"""The calls on a bare parameter dict, kept for code written before :class:`bptt.RNN`.

Each reads the model from the parameters' keys and shapes (:meth:`bptt.RNN.from_params`)
with the cell and head it is told, and runs that model's method. New code holds a
model value instead: ``model.loss_and_grad(params, ...)``.
"""

from __future__ import annotations

from typing import Any

from ..math.cells import CELLS
from .rnn import INITIALIZERS, RNN

__all__ = ["forward", "gradcheck", "init_params", "loss_and_grad", "vjp"]


def init_params(
    input_size: int,
    hidden_size: int,
    output_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    bias: bool = True,
    dtype: Any = "float32",
    seed: int = 0,
    init: str = "uniform",
    backend: str | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """``RNN(input_size, hidden_size, output_size, layers=num_layers, bidirectional=...,
    bias=..., initializer=init).init(seed=..., dtype=..., backend=..., device=...)``."""
    if init not in INITIALIZERS:  # named as this call names it (RNN says initializer)
        raise ValueError(f"init: expected one of {list(INITIALIZERS)}; got {init!r}")
    model = RNN(input_size, hidden_size, output_size, layers=num_layers,
                bidirectional=bidirectional, bias=bias, initializer=init)  # fmt: skip
    return model.init(seed=seed, dtype=dtype, backend=backend, device=device)


def _model(params: Any, nonlinearity: Any, **fields: Any) -> RNN:
    """The model ``params`` fit, with cell ``nonlinearity`` (refused naming this call's word)."""
    if not isinstance(nonlinearity, str) or nonlinearity not in CELLS:
        raise ValueError(f"nonlinearity: expected one of {list(CELLS)}; got {nonlinearity!r}")
    return RNN.from_params(params, cell=nonlinearity, **fields)


def forward(params: Any, inputs: Any, *, nonlinearity: str = "tanh", **kwargs: Any) -> Any:
    """:meth:`bptt.RNN.forward` of the model ``params`` fit (``nonlinearity``: its cell)."""
    return _model(params, nonlinearity).forward(params, inputs, **kwargs)


def loss_and_grad(
    params: Any, inputs: Any, targets: Any, *, nonlinearity: str = "tanh",
    head: str = "softmax", **kwargs: Any,
) -> Any:  # fmt: skip
    """:meth:`bptt.RNN.loss_and_grad` of the model ``params`` fit, with this cell and head."""
    model = _model(params, nonlinearity, head=head)
    return model.loss_and_grad(params, inputs, targets, **kwargs)


def gradcheck(
    params: Any, inputs: Any, targets: Any, *, nonlinearity: str = "tanh",
    head: str = "softmax", **kwargs: Any,
) -> float:  # fmt: skip
    """:meth:`bptt.RNN.gradcheck` of the model ``params`` fit, with this cell and head."""
    model = _model(params, nonlinearity, head=head)
    return model.gradcheck(params, inputs, targets, **kwargs)


def vjp(params: Any, inputs: Any, *, nonlinearity: str = "tanh", **kwargs: Any) -> Any:
    """:meth:`bptt.RNN.vjp` of the model ``params`` fit (``nonlinearity``: its cell)."""
    return _model(params, nonlinearity).vjp(params, inputs, **kwargs)
