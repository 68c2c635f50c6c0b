"""The tanh RNN, batched and time-major: forward pass and BPTT backward pass.

Shapes: T steps, B sequences, M inputs, D hidden units, C outputs.
Every function takes the namespace ``xp`` explicitly and does no validation:
the public entry points in :mod:`bptt.api` check their arguments first.

Forward (eqs. 19-21, plus the optional biases b and c)::

    z_t = U x_t + W s_{t-1} + b      s_t = tanh(z_t)      g_t = V s_t + c

Backward, as a reverse recurrence over t = T..1 (O(T), equal to the sums of
eqs. 57-69 but without their O(T^2) cost, and with the tanh' factor that
eqs. 13-15 drop, kept inside the product that eq. 63 wrongly reorders)::

    dz_t = (dS_t + dh_{t+1}) * (1 - s_t^2)      dh_t = W^T dz_t,  dh_{T+1} = 0

where dS_t = V^T dg_t (eq. 56) is the loss gradient reaching s_t from its own
output. Everything that is not sequential is one matrix product over all T*B rows.

Performance (benchmarks/NOTES.md): per time step the forward pass makes 5 array
operations and the backward pass 8, all on (B, D) blocks; every (T, B, D) array
is made once (U x_t + b is overwritten by s_t, V^T dg_t by dz_t) and updated
only in place or by ``__setitem__``, as the standard allows. On NumPy,
:mod:`bptt._parallel` runs large ``tanh`` blocks on threads and small
recurrences on one BLAS thread; the arithmetic, and so the result, is the same.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _parallel

__all__ = ["Cache", "backward", "forward", "is_token_ids", "one_hot"]


class Cache(NamedTuple):
    """What the backward pass needs from the forward pass."""

    inputs: Any  # (T, B) token ids or (T, B, M) dense vectors
    h0: Any  # (B, D) or None (zeros)
    states: Any  # (T, B, D): s_1 .. s_T
    keep: Any  # (T, B, D) dropout multipliers on the states before V, or None


def is_token_ids(inputs: Any) -> bool:
    return inputs.ndim == 2


def one_hot(ids: Any, n: int, dtype: Any, xp: Any) -> Any:
    """(N,) integer ids -> (N, n) one-hot rows (the seed's x_t, stacked)."""
    classes = xp.arange(n, device=ids.device)  # (n,)
    return xp.astype(ids[:, None] == classes[None, :], dtype)  # (N, n)


def input_projection(params: Any, inputs: Any, xp: Any) -> Any:
    """U x_t (+ b) for every step at once: (T, B, D). The first term of eq. (19).

    A fresh array, so callers may update it in place.
    """
    U, b = params["U"], params.get("b")  # (D, M), (D,) or None
    D, M = U.shape
    if is_token_ids(inputs):
        T, B = inputs.shape
        # U x_t with one-hot x_t is column x_t of U: a gather, not a GEMM, from a
        # row-major (M, D) table of those columns with b already added (the same
        # sums, done M times instead of T*B times).
        table = xp.reshape(xp.reshape(U.T, (M * D,)), (M, D))  # (M, D), C order
        if b is not None:
            table = table + b  # (M, D)
        xu = xp.take(table, xp.reshape(inputs, (T * B,)), axis=0)  # (T*B, D)
    else:
        T, B, _ = inputs.shape
        xu = xp.reshape(inputs, (T * B, M)) @ U.T  # (T*B, D)
        if b is not None:
            xu += b  # (T*B, D), in place on the fresh product
    return xp.reshape(xu, (T, B, D))


def forward(params: Any, inputs: Any, h0: Any, xp: Any, keep: Any = None) -> tuple[Any, Any, Cache]:
    """Hidden states (T, B, D), logits (T, B, C) and the cache for :func:`backward`.

    ``keep`` (T, B, D), optional: dropout on the non-recurrent path, multiplying the
    states before V only (0 or 1/(1-p) per entry); the recurrence never sees it.
    """
    work = inputs.shape[1] * params["W"].shape[0] ** 2  # B D^2: one recurrence product
    with _parallel.small_blas(xp, work):  # one BLAS thread for small ones (NumPy)
        return _forward(params, inputs, h0, xp, keep)


def _forward(params: Any, inputs: Any, h0: Any, xp: Any, keep: Any) -> tuple[Any, Any, Cache]:
    W, V = params["W"], params["V"]  # (D, D), (C, D)
    # U x_t + b for every step, a fresh array that the recurrence overwrites
    # in place with s_t, step by step: no second (T, B, D) buffer.
    states = input_projection(params, inputs, xp)  # (T, B, D)
    T, B, D = states.shape
    WT = W.T  # (D, D), transposed once, not per step

    # tanh over (B, D) is single-threaded in NumPy: large ones are cut in row
    # blocks run on threads (bptt._parallel); one block everywhere else.
    blocks = _parallel.row_blocks(xp, B, B * D, itemsize=xp.finfo(W.dtype).bits // 8)

    def tanh_into(t: int, z: Any) -> Any:  # s_t = tanh(z_t), eq. (20), stored in states[t]
        if len(blocks) == 1:
            s = xp.tanh(z)  # (B, D)
            states[t, ...] = s
            return s

        def block(rows: slice) -> None:
            states[t, rows, ...] = xp.tanh(z[rows, ...])  # (b, D)

        _parallel.run_blocks(block, blocks)
        return states[t, ...]  # (B, D)

    s = h0  # (B, D) or None: s_0 = 0
    for t in range(T):  # the only sequential part: eqs. (19)-(20)
        if s is None:
            z = states[t, ...]  # (B, D): U x_1 + b
        else:
            z = s @ WT  # (B, D), a new array: safe to update in place
            z += states[t, ...]  # + U x_t + b
        s = tanh_into(t, z)  # (B, D)

    out = states if keep is None else states * keep  # (T, B, D)
    logits = xp.reshape(xp.reshape(out, (T * B, D)) @ V.T, (T, B, V.shape[0]))  # eq. (21)
    if params.get("c") is not None:
        logits += params["c"]  # (T, B, C), in place on the fresh product
    return states, logits, Cache(inputs, h0, states, keep)


def backward(params: Any, dlogits: Any, cache: Cache, xp: Any) -> dict[str, Any]:
    """Gradients of the loss for every parameter, given dL/dg (T, B, C).

    ``h0`` is a constant: no gradient flows into it (truncated BPTT carries it).
    """
    work = cache.states.shape[1] * params["W"].shape[0] ** 2  # B D^2
    with _parallel.small_blas(xp, work):
        return _backward(params, dlogits, cache, xp)


def _backward(params: Any, dlogits: Any, cache: Cache, xp: Any) -> dict[str, Any]:
    W, V = params["W"], params["V"]  # (D, D), (C, D)
    S = cache.states  # (T, B, D)
    T, B, D = S.shape
    C = V.shape[0]
    dG = xp.reshape(dlogits, (T * B, C))  # (T*B, C)
    out = S if cache.keep is None else S * cache.keep  # what V saw  (T, B, D)
    S2 = xp.reshape(out, (T * B, D))  # (T*B, D)

    grads: dict[str, Any] = {"V": dG.T @ S2}  # eqs. (54), (71): sum_t dg_t s_t^T  (C, D)
    if params.get("c") is not None:
        grads["c"] = xp.sum(dG, axis=0)  # (C,)
    # dS_t = V^T dg_t, eq. (56), all steps at once, into a fresh array that the
    # reverse recurrence overwrites in place with dz_t.
    dZ = xp.reshape(dG @ V, (T, B, D))  # (T, B, D)
    if cache.keep is not None:
        dZ *= cache.keep  # dropout passes gradient where it passed the state

    # Reverse recurrence: dz_t = (dS_t + W^T dz_{t+1}) * (1 - s_t^2), eq. (62) for the
    # tanh' factor, kept at every step: the correction to eqs. (13)-(15) and (63).
    dz = dZ[T - 1, ...] * (1 - S[T - 1, ...] * S[T - 1, ...])  # (B, D)
    dZ[T - 1, ...] = dz
    for t in range(T - 2, -1, -1):
        g = dz @ W  # (B, D): W^T dz_{t+1} as row vectors; a new array
        g += dZ[t, ...]  # + dS_t
        s = S[t, ...]  # (B, D)
        q = s * s  # (B, D)
        q *= g
        g -= q  # g * (1 - s_t^2), without a (1 - s^2) temporary
        dz = g  # (B, D)
        dZ[t, ...] = dz

    dZ2 = xp.reshape(dZ, (T * B, D))  # (T*B, D)
    # dW = sum_t dz_t s_{t-1}^T (eqs. 67, 72), with s_0 = h0.
    dW = xp.reshape(dZ[1:, ...], ((T - 1) * B, D)).T @ xp.reshape(S[:-1, ...], ((T - 1) * B, D))
    if cache.h0 is not None:
        dW += dZ[0, ...].T @ cache.h0  # (D, D)
    grads["W"] = dW
    if params.get("b") is not None:
        grads["b"] = xp.sum(dZ2, axis=0)  # (D,)
    inputs = cache.inputs
    if is_token_ids(inputs):
        M = params["U"].shape[1]
        X = one_hot(xp.reshape(inputs, (T * B,)), M, S.dtype, xp)  # (T*B, M)
    else:
        X = xp.reshape(inputs, (T * B, inputs.shape[2]))  # (T*B, M)
    grads["U"] = dZ2.T @ X  # eqs. (69), (73): sum_t dz_t x_t^T  (D, M)
    return {key: grads[key] for key in params}  # same keys, same order as params
