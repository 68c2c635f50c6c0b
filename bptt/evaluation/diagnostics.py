"""Gradient-flow diagnostics: how far back does the loss at step t reach?

For one batch, :func:`gradient_flow` measures ||dL_t/ds_k|| for every pair
k <= t: the loss of step t pulled back through the products of Jacobians
diag(1 - s_i^2) W of eqs. (58)-(62), the corrected eq. (63) of
``docs/derivation.md``. Seen against the lag t - k, these norms show whether
gradients vanish (they shrink geometrically), explode (they grow) or sit at the
edge. The two numbers that predict the slope are the spectral radius and the
largest singular value of W.

The sweep runs over k = T..1, like :func:`bptt.math.model.backward`, but keeps one
row per loss step instead of their sum: the backward pass carries
dL/ds_k = sum_t dL_t/ds_k, this module carries every dL_t/ds_k separately.

In a stack of layers (:mod:`bptt.math.layers`, one direction) the map is that of the
last layer, whose states reach the loss only through the output and their own
later states, so the same sweep holds with that layer's W; with relu the factor
diag(1 - s^2) becomes diag(s > 0) (eq. B17).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from .. import backends
from ..api.checks import as_index, check_call, check_values
from ..math import layers, model
from ..math.cells import get_cell
from ..math.heads import HEADS, loss_weights, reduce

__all__ = ["GradientFlow", "gradient_flow", "spectral_stats", "state_gradient_sweep"]


class GradientFlow(NamedTuple):
    """What :func:`gradient_flow` returns. Arrays live where the parameters live."""

    norms: Any  # (T, T): norms[t, k] = ||dL_t/ds_k|| for k <= t, 0 above the diagonal
    lag_mean: Any  # (T,): lag_mean[l] = mean over loss steps t >= l of norms[t, t - l]
    steps: Any  # (T,) bool: the steps t whose loss counts (some unmasked sequence)
    spectral_radius: float  # max |eigenvalue| of W (host; NaN for a gated cell's (G D, D) W)
    max_singular_value: float  # largest singular value of W (computed on the host)
    cell_norms: Any = None  # LSTM: (T, T) ||dL_t/dc_k||, the flow through the cell state
    cell_lag_mean: Any = None  # LSTM: (T,) its mean by lag, as lag_mean


def spectral_stats(W: Any) -> tuple[float, float]:
    """Spectral radius and largest singular value of W (D, D), as Python floats.

    The array API has no general (non-symmetric) eigenvalue routine, so W is
    copied to the host with its backend's ``to_numpy`` and handed to
    ``numpy.linalg``. W is D x D, small next to the (T, B, D) work of a batch;
    the copy is this module's only host transfer of parameter data.
    """
    host = np.asarray(backends.backend_of(W).to_numpy(W), dtype=np.float64)  # (G D, D)
    square = host.shape[0] == host.shape[1]  # a gated cell's stacked W has no eigenvalues
    radius = float(np.max(np.abs(np.linalg.eigvals(host)))) if square else math.nan
    sigma = float(np.linalg.norm(host, 2))
    return radius, sigma


def state_gradient_sweep(
    states: Any, dS: Any, W: Any, xp: Any, nonlinearity: str = "tanh"
) -> Iterator[tuple[int, Any]]:
    """Yield ``(k, G)`` for k = T-1, ..., 0 (0-based), with G[j] = dL_{k+j}/ds_k.

    ``states`` (T, B, D) are s_1..s_T; ``dS`` (T, B, D) holds dL_t/ds_t, the loss
    gradient reaching each state from its own output (eq. (56), already weighted
    by mask and reduction); G has shape (T - k, B, D). One step of the sweep is

        G_k[t] = (G_{k+1}[t] * (1 - s_{k+1}^2)) @ W  for t > k,    G_k[k] = dS_k,

    the row-vector form of dL_t/ds_k = dL_t/ds_{k+1} diag(1 - s_{k+1}^2) W, with
    the tanh' factor that eqs. (13)-(15) drop, in the order that eq. (63) loses.
    Summing G over its first axis gives dL/ds_k, what the backward pass carries.
    Each G is a new array (nothing is written in place: immutable arrays work too).

    This is eq. (B15) of ``docs/derivation.md``. Cost: T sequential steps (as
    many as the backward pass), step k one matrix
    product over (T - k - 1) * B rows; O(T^2 B D^2) in all, inherent in asking
    for all T(T+1)/2 pairs. G is at most (T, B, D), the size of ``states``. With
    ``nonlinearity="relu"`` the factor is s > 0 (eq. B17).
    """
    T, B, D = states.shape
    tanh_prime = model.derivative(states, nonlinearity, xp)  # eq. (62): ds_t/dz_t  (T, B, D)
    G = dS[T - 1 :, ...]  # (1, B, D): the loss of step T reaches s_T directly
    yield T - 1, G
    for k in range(T - 2, -1, -1):  # every open row crosses one more diag(1 - s_{k+1}^2) W
        n = T - k - 1  # rows open before this step
        back = xp.reshape(xp.reshape(G * tanh_prime[k + 1, ...], (n * B, D)) @ W, (n, B, D))
        G = xp.concat([dS[k : k + 1, ...], back], axis=0)  # (T-k, B, D)
        yield k, G


def gradient_flow(
    rnn: Any,
    params: Any,
    inputs: Any,
    targets: Any,
    *,
    h0: Any = None,
    mask: Any = None,
    reduction: str = "mean",
) -> GradientFlow:
    """Norms of dL_t/ds_k for all k <= t over one batch, their mean by lag, and W's spectrum.

    For a stack (``num_layers`` > 1) s_k are the last layer's states and W is its
    recurrent matrix; a bidirectional model is refused (its reverse states are
    reached by the losses of earlier steps, not later ones).

    ``rnn``: the model (:class:`bptt.RNN`, a tanh or relu cell; its head is used).
    Arguments as in :meth:`bptt.RNN.loss_and_grad`: ``inputs`` (T, B) ids or (T, B, M),
    ``targets``, ``h0`` (B, D), ``head``, ``mask`` (T, B), ``reduction``. L_t is
    step t's share of the reduced loss, L = sum_t L_t (eq. (B8)), so the weights
    of the mask and of ``reduction="mean"`` are included. Arguments are checked
    as :func:`bptt.loss_and_grad` checks them, values included (a device sync).

    Returns a :class:`GradientFlow`:

    - ``norms`` (T, T): ``norms[t, k]`` is the Frobenius norm of the (B, D) array
      dL_t/ds_k (row b: the gradient for sequence b), 0-based t and k, zero for
      k > t. The diagonal is ||V^T dg_t||; below it each step back multiplies by
      diag(1 - s_i^2) W, so ``norms[t, k] <= norms[t, t] * sigma_max^(t - k)``.
    - ``lag_mean`` (T,): for each lag l = t - k, the mean of ``norms[t, t - l]``
      over the steps t >= l whose loss counts (``steps``); NaN for a lag that no
      counting step reaches.
    - ``steps`` (T,) bool: True where some sequence's step t is unmasked.
    - ``spectral_radius``, ``max_singular_value``: Python floats for W, computed
      on the host (see :func:`spectral_stats`; the array API has no eigvals).

    ``norms``, ``lag_mean`` and ``steps`` are arrays of the parameters' namespace
    and device: nothing but W is copied to the host. Cost: see
    :func:`state_gradient_sweep`; O(T^2 B D^2), T sequential matrix products.
    """
    xp, dims = check_call(
        rnn, params, inputs, targets=targets, h0=h0, mask=mask, reduction=reduction,
        need_targets=True,
    )  # fmt: skip
    head = rnn.head
    inputs, targets, mask = (as_index(a, xp) for a in (inputs, targets, mask))
    if dims.directions != 1:
        raise ValueError(
            "params: gradient_flow measures how far back in time losses reach, and a "
            "bidirectional model's reverse states are reached by earlier losses; give a "
            "one-direction model"
        )
    check_values(params, inputs, targets=targets, h0=h0, mask=mask, head=head, dims=dims, xp=xp)
    T, B = inputs.shape[:2]
    weights = loss_weights(
        mask, (T, B, dims.C), head=head, reduction=reduction, dtype=dims.dtype, xp=xp
    )
    out, cache = layers.forward(params, inputs, h0, xp, cell=rnn.cell)
    S, logits = out.states, out.logits  # (T, B, D) of the last layer, (T, B, C)
    last = (dims.layers - 1) * dims.directions  # the last layer's (forward) cell
    p = layers.cell_params(params, dims.layers - 1, 0, get_cell(rnn.cell).extra_biases)
    terms, dlogits = HEADS[head](logits, targets, xp)
    _, dlogits = reduce(terms, dlogits, weights, xp)  # dL/dg_t with the weights, eq. (B9)
    dS = model.state_grads(params, dlogits, None, xp)  # (T, B, D), eq. (56)
    if mask is None:
        steps = xp.ones((T,), dtype=xp.bool, device=S.device)  # (T,)
    else:
        steps = xp.any(mask if xp.isdtype(mask.dtype, "bool") else mask != 0, axis=1)  # (T,)
    if rnn.gates == 1:
        sweep = state_gradient_sweep(S, dS, p["W"], xp, rnn.cell)  # (k, G)
        norms, lag_mean = _by_lag(sweep, steps, xp)
        return GradientFlow(norms, lag_mean, steps, *spectral_stats(p["W"]))
    H, aux = cache.states[last], cache.aux[last]
    h_rows, c_rows = [], []
    for k, G, Gc in cell_gradient_sweep(get_cell(rnn.cell), p, H, aux, dS, xp):
        h_rows.append((k, G))
        c_rows.append((k, Gc))
    norms, lag_mean = _by_lag(h_rows, steps, xp)
    cell = _by_lag(c_rows, steps, xp) if rnn.state_parts == 2 else (None, None)
    return GradientFlow(norms, lag_mean, steps, *spectral_stats(p["W"]), *cell)


def _by_lag(sweep: Any, steps: Any, xp: Any) -> tuple[Any, Any]:
    """``(norms, lag_mean)`` from the ``(k, G)`` of a sweep, G[j] = dL_{k+j}/ds_k: the
    (T, T) table of ||dL_t/ds_k|| and, for each lag t - k, its mean over counting t."""
    T = steps.shape[0]
    counts = None  # (T,) 1 where step t's loss counts, in the norms' dtype
    columns: list[Any] = [None] * T  # columns[k]: ||dL_t/ds_k|| for t = 0..T-1, zero for t < k
    lag_sum = lag_count = None
    for k, G in sweep:
        column = xp.sqrt(xp.sum(G * G, axis=(1, 2)))  # ||dL_t/ds_k||, t = k..T-1  (T-k,)
        if counts is None:
            counts = xp.astype(steps, column.dtype)  # (T,)
            lag_sum = lag_count = xp.zeros((T,), dtype=column.dtype, device=column.device)
        zeros = xp.zeros((k,), dtype=column.dtype, device=column.device)  # (k,)
        columns[k] = xp.concat([zeros, column])  # (T,)
        # entry t of the column has lag t - k = 0 .. T-1-k: shift it to the front
        lag_sum = lag_sum + xp.concat([column * counts[k:], zeros])
        lag_count = lag_count + xp.concat([counts[k:], zeros])
    norms = xp.stack(columns, axis=1)  # (T, T), [t, k]
    reached = lag_count > 0  # (T,)
    ones = xp.ones_like(lag_count)  # (T,)
    lag_mean = xp.where(
        reached, lag_sum / xp.where(reached, lag_count, ones), xp.full_like(ones, xp.nan)
    )  # (T,)
    return norms, lag_mean


def cell_gradient_sweep(
    cell: Any, p: Any, H: Any, aux: Any, dS: Any, xp: Any
) -> Iterator[tuple[int, Any, Any]]:
    """:func:`state_gradient_sweep` for any cell (:mod:`bptt.math.cells`): yield ``(k, G, Gc)``
    for k = T-1, ..., 0 with G[j] = dL_{k+j}/dh_k and, for LSTM, Gc[j] = dL_{k+j}/dc_k
    (else None), each (T - k, B, D).

    Each row still open crosses one more step, k + 1, backwards: the cell's own reverse
    recurrence over that one step, its forward values tiled once per open row, with the
    rows' gradients arriving at its last state (``d_last``) and none from outputs. Row
    t = k starts as dS_k; for LSTM the rows also carry dL_t/dc_k through c_{k+1} alone,
    and Gc adds the path through h_k, G o_k (1 - tanh^2 c_k) (eq. (L7)). The cost is
    that of the vanilla sweep: T steps of one product over (T - k - 1) B rows.
    """
    T, B, D = dS.shape
    two = cell.state_parts == 2
    # LSTM: dh_k/dc_k = o_k (1 - tanh^2 c_k) (T, B, D), eq. (L7); the rows carry dL_t/dc_k
    # through c_{k+1} alone (Gp), and the total adds the path through h_k
    dh_dc = aux[0][..., 3 * D :] * (1 - aux[3] * aux[3]) if two else None
    G = dS[T - 1 :, ...]  # (1, B, D)
    Gp = xp.zeros_like(G) if two else None
    yield T - 1, G, (Gp + G * dh_dc[T - 1, ...] if two else None)
    for k in range(T - 2, -1, -1):
        n = T - k - 1  # rows open before this step: t = k + 1 .. T - 1
        Hs = xp.concat([H[k + 1 : k + 3, ...]] * n, axis=1)  # (2, n B, D): h_k, h_{k+1}
        A = tuple(xp.concat([a[k + 1 : k + 2, ...]] * n, axis=1) for a in aux)  # step k + 1
        into = xp.reshape(G, (n * B, D))
        if two:
            into = (into, xp.reshape(Gp, (n * B, D)))
        none = xp.zeros((1, n * B, D), dtype=dS.dtype, device=dS.device)  # no output grads
        _, _, d0 = cell.reverse_recurrence(p, Hs, A, none, xp, model, True, d_last=into)
        dh = d0[0] if two else d0
        G = xp.concat([dS[k : k + 1, ...], xp.reshape(dh, (n, B, D))], axis=0)  # (T-k, B, D)
        if two:
            zero = xp.zeros_like(dS[k : k + 1, ...])
            Gp = xp.concat([zero, xp.reshape(d0[1], (n, B, D))], axis=0)  # (T-k, B, D)
        yield k, G, (Gp + G * dh_dc[k, ...] if two else None)
