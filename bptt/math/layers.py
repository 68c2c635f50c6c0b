"""Stacked and bidirectional layers: the one-layer functions of :mod:`bptt.math.model`, composed.

Pure math, like :mod:`bptt.math.model`: the namespace ``xp`` it is given and nothing else.

**Parameter layout** (stable; :func:`param_names`). Layer l = 0..L-1, direction
d = 0 (forward) or 1 (reverse). Cell (l, d) has ``U{s}``, ``W{s}`` and ``b{s}``,
where the suffix s is empty for (0, 0), ``_l{l}`` for a forward cell of a higher
layer and ``_l{l}_reverse`` for a reverse cell (torch's ``weight_ih_l{l}_reverse``)::

    U (D, M)      W (D, D)      b (D,)         layer 0, forward: today's names
    U_l0_reverse  W_l0_reverse  b_l0_reverse   layer 0, reverse (bidirectional)
    U_l1 (D, K D) W_l1          b_l1           layer 1 reads K D units (K directions)
    V (C, K D)    c (C,)                       the output reads the last layer

The keys come matrices first, cell by cell (layer by layer, forward before
reverse), then V, then the biases in the same order and c: for one layer and one
direction exactly ``U, W, V, b, c``. Layer l > 0 reads the states of layer l - 1,
its directions concatenated as torch concatenates them ([forward, reverse]).

**Forward** (eqs. B19-B21): layer l runs eq. (19)-(20) on its input; the reverse
cell runs the same recurrence on the time-flipped input (``xp.flip``, a view on
NumPy and CuPy) and its states are flipped back. ``layer_masks[l]`` (T, B, K D)
multiplies layer l's output on its way into layer l + 1 (dropout between layers);
``dropout_mask`` multiplies the last layer's on its way to V, as for one layer.

**Backward** (:func:`backward`): the vector-Jacobian product of the whole stack for
any dL/dg (``dlogits``) and any extra dL/dS of the last layer's states
(``dstates``): the output gradients, then layer by layer from the top the reverse
recurrence of each cell (eq. B12), its weight gradients (eq. B13) and the
gradient it sends down (eq. B20), and on request dL/dx (eq. B22) and dL/dh0
(eq. B23). Nothing here checks arguments (:mod:`bptt.api.checks` does).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from . import model
from .cells import get_cell

__all__ = [
    "Arch",
    "Cache",
    "Forward",
    "arch_of",
    "backward",
    "cell_params",
    "cell_state",
    "forward",
    "param_names",
    "stack_states",
    "suffix",
]


class Arch(NamedTuple):
    """The shape of a stack: ``layers`` L >= 1 and ``directions`` 1 or 2."""

    layers: int = 1
    directions: int = 1

    @property
    def single(self) -> bool:
        """One layer, one direction: the model of :mod:`bptt.math.model` alone."""
        return self.layers == 1 and self.directions == 1

    def cells(self) -> Iterator[tuple[int, int]]:
        """(layer, direction) in the layout's order: index ``l * directions + d``."""
        for layer in range(self.layers):
            for direction in range(self.directions):
                yield layer, direction


def suffix(layer: int, direction: int) -> str:
    """The name suffix of cell (layer, direction): "", "_l1", "_l0_reverse", ..."""
    if layer == 0 and direction == 0:
        return ""
    return f"_l{layer}" + ("_reverse" if direction else "")


def param_names(
    arch: Arch, *, bias: bool = True, output_bias: bool | None = None,
    extra_biases: tuple[str, ...] = (),
) -> tuple[str, ...]:  # fmt: skip
    """Every key of a stack's parameters, in the layout's order (see the module doc).

    ``bias``: the cells' b (and a gated cell's ``extra_biases``, each after its b);
    ``output_bias``: c (default: as ``bias``).
    """
    cells = [suffix(layer, d) for layer, d in arch.cells()]
    names = [f"{m}{s}" for s in cells for m in ("U", "W")] + ["V"]
    if bias:
        names += [f"{m}{s}" for s in cells for m in ("b", *extra_biases)]
    if bias if output_bias is None else output_bias:
        names.append("c")
    return tuple(names)


def arch_of(keys: Any) -> Arch:
    """The architecture the keys of a parameter mapping name (``W_l{l}`` counted from
    1 up while present; two directions when ``W_l0_reverse`` is there)."""
    keys = set(keys)
    layers = 1
    while f"W_l{layers}" in keys:
        layers += 1
    return Arch(layers, 2 if "W_l0_reverse" in keys else 1)


def cell_params(
    params: Mapping[str, Any], layer: int, direction: int, extra_biases: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Cell (layer, direction)'s parameters under the one-layer names U, W, b (and a
    gated cell's extra biases)."""
    s = suffix(layer, direction)
    names = ("U", "W", "b", *extra_biases)
    return {name: params.get(f"{name}{s}") for name in names}


class Forward(NamedTuple):
    """What a forward pass returns (``bptt.vjp``'s ``outputs``)."""

    states: Any  # (T, B, K D): the last layer's states, directions concatenated
    logits: Any  # (T, B, C)
    h_last: Any  # (B, D) for one cell; (L K, B, D) else, cell l K + d: torch's h_n
    # (a cell with two state parts, LSTM: the pair (h_n, c_n), each shaped so)


class Cache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`."""

    layer_inputs: tuple[Any, ...]  # layer l's x: the inputs, then (T, B, K D) after its mask
    states: tuple[Any, ...]  # cell l K + d: (T+1, B, D) s_0 .. s_T in the order it ran
    aux: tuple[Any, ...]  # cell l K + d: what else its backward pass needs (gates, ...)
    out_states: Any  # (T, B, K D): what V multiplied
    dropout_mask: Any  # (T, B, K D) or None
    layer_masks: Any  # L - 1 arrays (T, B, K D), or None
    cell: Any  # the cell (bptt.math.cells) that ran


def _flip(x: Any, xp: Any) -> Any:
    """x with its time axis (the first) reversed: a view on NumPy and CuPy."""
    return xp.flip(x, axis=0)


def cell_state(h0: Any, arch: Arch, layer: int, direction: int) -> Any:
    """Cell (layer, direction)'s part of a state shaped as h0 (None stays None)."""
    if h0 is None or arch.single:
        return h0  # (B, D), a pair of them, or None
    index = layer * arch.directions + direction
    if isinstance(h0, tuple):  # a state of two parts (LSTM's (h0, c0))
        return tuple(part[index, ...] for part in h0)  # (B, D) each
    return h0[index, ...]  # (B, D)


def stack_states(last: list[Any], arch: Arch, xp: Any) -> Any:
    """Every cell's last state as h0 is shaped: (B, D) for one cell, else (L K, B, D)
    (per part, for a state of two parts)."""
    if arch.single:
        return last[0]
    if isinstance(last[0], tuple):
        return tuple(xp.stack([s[k] for s in last]) for k in range(len(last[0])))
    return xp.stack(last)  # (L K, B, D)


def forward(
    params: Mapping[str, Any],
    inputs: Any,
    h0: Any,
    xp: Any,
    *,
    cell: Any = "tanh",
    dropout_mask: Any = None,
    layer_masks: Any = None,
    recurrences: Any = model,
    with_output: bool = True,
) -> tuple[Forward, Cache]:
    """The stack over ``inputs`` (T, B) ids or (T, B, M): ``(Forward, Cache)``.

    ``with_output=False`` skips V (logits None): what a replay that only moves the
    state forward needs (:mod:`bptt.math.remat`).

    ``h0`` (B, D) for one cell, (L K, B, D) for L layers of K directions (None:
    zeros). ``cell``: a name of :data:`bptt.math.cells.CELLS` or a cell. ``recurrences``:
    where the loops come from (:mod:`bptt.math.model`, or a library's version with the same
    contract and bits).
    """
    arch, kind = arch_of(params), get_cell(cell) if isinstance(cell, str) else cell
    x, layer_inputs, all_states, all_aux, last = inputs, [], [], [], []
    for layer in range(arch.layers):
        if layer > 0 and layer_masks is not None:
            x = x * layer_masks[layer - 1]  # (T, B, K D): dropout between layers, eq. (B19)
        layer_inputs.append(x)
        outs = []
        for direction in range(arch.directions):
            p = cell_params(params, layer, direction, kind.extra_biases)
            xu = model.input_projection(p, x, xp)  # (T, B, G D): U x_t + b, eq. (B1)
            if direction:
                xu = _flip(xu, xp)  # the reverse cell runs forward on flipped time, (B21)
            s0 = cell_state(h0, arch, layer, direction)
            states, aux, s_last = kind.recurrence(p, xu, s0, xp, recurrences)  # (T+1, B, D)
            del xu  # each (T, B, G D) array is let go once used
            all_states.append(states)
            all_aux.append(aux)
            last.append(s_last)  # (B, D), or a pair of them
            outs.append(_flip(states[1:, ...], xp) if direction else states[1:, ...])
        x = outs[0] if arch.directions == 1 else xp.concat(outs, axis=-1)  # (T, B, K D)
    logits = out_states = None
    if with_output:
        logits, out_states = model.output(params, x, dropout_mask, xp)  # (T, B, C), eq. (B3)
    h_last = stack_states(last, arch, xp)  # shaped as h0
    cache = Cache(tuple(layer_inputs), tuple(all_states), tuple(all_aux), out_states,
                  dropout_mask, layer_masks, kind)  # fmt: skip
    return Forward(x, logits, h_last), cache


def _renamed(grads: dict[str, Any], s: str) -> dict[str, Any]:
    return {f"{key}{s}": value for key, value in grads.items()}


def _state_grads(
    params: Mapping[str, Any], dlogits: Any, dstates: Any, cache: Cache, xp: Any
) -> tuple[dict[str, Any], Any]:
    """dV, dc (eq. B10) and dL/dS of the last layer's states (eq. B11, plus ``dstates``)."""
    if dlogits is None:  # V and c were not used by the loss (or absent: one cell, remat)
        return {k: xp.zeros_like(params[k]) for k in ("V", "c") if params.get(k) is not None}, (
            dstates
        )
    grads = model.output_grads(params, dlogits, cache.out_states, xp)  # dV, dc
    dS = model.state_grads(params, dlogits, cache.dropout_mask, xp)  # (T, B, K D)
    if dstates is not None:
        dS = dS + dstates  # a user head's gradient joins the built-in one, eq. (B24)
    return grads, dS


def backward(
    params: Mapping[str, Any],
    cache: Cache,
    dlogits: Any,
    dstates: Any,
    xp: Any,
    *,
    want_inputs: bool = False,
    want_h0: bool = False,
    recurrences: Any = model,
    d_last: Any = None,
) -> tuple[dict[str, Any], Any, Any]:
    """The stack's VJP: ``(grads, d_inputs, d_h0)``, grads keyed and ordered as params.

    ``dlogits`` (T, B, C) and/or ``dstates`` (T, B, K D) (None: zero). ``d_inputs``
    (T, B, M) for dense inputs when ``want_inputs``, ``d_h0`` shaped as h0 when
    ``want_h0``; None otherwise. ``d_last``, shaped as ``h_last`` (None: zero), is the
    gradient reaching every cell's last state from later steps (the ``d_h0`` of the
    segment after these, :mod:`bptt.math.remat`); one direction only.
    """
    arch, kind = arch_of(params), cache.cell
    grads, dS = _state_grads(params, dlogits, dstates, cache, xp)
    D = params["W"].shape[1]
    d_inputs, d_h0 = None, [None] * (arch.layers * arch.directions)
    for layer in reversed(range(arch.layers)):
        x = cache.layer_inputs[layer]  # (T, B, M) or (T, B) ids for layer 0
        down = layer > 0 or want_inputs  # does anything below need dL/dx?
        dX = None
        for direction in range(arch.directions):
            index = layer * arch.directions + direction
            p, states = (
                cell_params(params, layer, direction, kind.extra_biases),
                cache.states[index],
            )
            dS_d = dS if arch.directions == 1 else dS[..., direction * D : (direction + 1) * D]
            x_d = x
            if direction:  # the reverse cell's steps ran on flipped time: so do their grads
                dS_d, x_d = _flip(dS_d, xp), _flip(x, xp)
            last = {} if d_last is None else {"d_last": cell_state(d_last, arch, layer, direction)}
            dXU, dHW, d_h0[index] = kind.reverse_recurrence(
                p, states, cache.aux[index], dS_d, xp, recurrences, want_h0, **last
            )  # (T, B, G D) twice (one array for most cells), eq. (B12); dL/ds_0, eq. (B23)
            del dS_d
            if direction == arch.directions - 1:
                dS = None  # let it go before the products: a lower peak
            cell_grads = kind.weight_grads(p, dXU, dHW, states, x_d, xp)  # eq. (B13)
            grads.update(_renamed(cell_grads, suffix(layer, direction)))
            if down:
                dx = kind.input_grads(p["U"], dXU, xp)  # (T, B, M_l), eq. (B20)/(B22)
                dx = _flip(dx, xp) if direction else dx
                dX = dx if dX is None else dX + dx
        if layer > 0:
            mask = None if cache.layer_masks is None else cache.layer_masks[layer - 1]
            dS = dX if mask is None else dX * mask  # through the dropout between layers
        else:
            d_inputs = dX
    dh0 = stack_states(d_h0, arch, xp) if want_h0 else None  # shaped as h0
    return {key: grads[key] for key in params}, d_inputs, dh0
