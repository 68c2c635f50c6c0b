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
output. Everything that is not sequential is one matrix product over all the
rows of a block of steps: :func:`forward` and :func:`backward` use one block of
all T steps; :mod:`bptt.overlap` runs the same functions on several blocks, the
products of one block beside the recurrence of the next.

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

__all__ = [
    "Cache",
    "add_output_grads",
    "add_weight_grads",
    "backward",
    "column_sums",
    "forward",
    "input_projection",
    "is_token_ids",
    "one_hot",
    "output",
    "recurrence",
    "reverse_recurrence",
    "state_grads",
]


class Cache(NamedTuple):
    """What the backward pass needs from the forward pass."""

    inputs: Any  # (T, B) token ids or (T, B, M) dense vectors
    h0: Any  # (B, D) or None (zeros)
    states: Any  # (T, B, D): s_1 .. s_T
    keep: Any  # (T, B, D) dropout multipliers on the states before V, or None


def is_token_ids(inputs: Any) -> bool:
    return inputs.ndim == 2


def one_hot(ids: Any, n: int, dtype: Any, xp: Any) -> Any:
    """(N,) integer ids -> (N, n) one-hot rows (the seed's x_t, stacked).

    Gathered rows of the identity when that is no larger than the result (n <= N):
    on NumPy 4-7x faster than comparing every id with every class, which is the
    way for a vocabulary larger than N (benchmarks/NOTES.md).
    """
    if n <= ids.shape[0]:
        return xp.take(xp.eye(n, dtype=dtype, device=ids.device), ids, axis=0)  # (N, n)
    classes = xp.arange(n, device=ids.device)  # (n,)
    return xp.astype(ids[:, None] == classes[None, :], dtype)  # (N, n)


def column_sums(x: Any, xp: Any) -> Any:
    """Sum over the rows of x (N, K): (K,). A vector-matrix product, which NumPy
    runs 4-5x faster than its reduction over the first axis at these shapes."""
    return xp.ones((x.shape[0],), dtype=x.dtype, device=x.device) @ x  # (K,)


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


def recurrence(W: Any, states: Any, s: Any, steps: range, xp: Any, *, split: bool = True) -> Any:
    """Eqs. (19)-(20) over ``steps``, in place: ``states[t]`` holds U x_t + b on entry
    and s_t on return. ``s`` (B, D) is s_{t-1} of the first step (None: zeros).
    Returns s of the last step. ``split=False`` keeps ``tanh`` on this thread.
    """
    _, B, D = states.shape
    WT = W.T  # (D, D), transposed once, not per step
    # tanh over (B, D) is single-threaded in NumPy: large ones are cut in row
    # blocks run on threads (bptt._parallel); one block everywhere else.
    rows = [slice(0, B)]
    if split:
        rows = _parallel.row_blocks(xp, B, B * D, itemsize=xp.finfo(W.dtype).bits // 8)

    def tanh_into(t: int, z: Any) -> Any:  # s_t = tanh(z_t), eq. (20), stored in states[t]
        if len(rows) == 1:
            s = xp.tanh(z)  # (B, D)
            states[t, ...] = s
            return s

        def block(r: slice) -> None:
            states[t, r, ...] = xp.tanh(z[r, ...])  # (b, D)

        _parallel.run_blocks(block, rows)
        return states[t, ...]  # (B, D)

    for t in steps:  # the only sequential part of the forward pass
        if s is None:
            z = states[t, ...]  # (B, D): U x_1 + b
        else:
            z = s @ WT  # (B, D), a new array: safe to update in place
            z += states[t, ...]  # + U x_t + b
        s = tanh_into(t, z)  # (B, D)
    return s


def output(params: Any, states: Any, keep: Any, xp: Any) -> tuple[Any, Any]:
    """Logits g_t = V s_t + c, eq. (21), for a block of n steps: ``(logits, seen)``.

    ``states`` (n, B, D); ``keep`` (n, B, D) or None: dropout multipliers on the
    non-recurrent path. ``seen`` (n, B, D) is what V multiplied (``states`` itself
    without dropout); ``logits`` (n, B, C) is a fresh array.
    """
    n, B, D = states.shape
    V = params["V"]  # (C, D)
    seen = states if keep is None else states * keep  # (n, B, D)
    logits = xp.reshape(xp.reshape(seen, (n * B, D)) @ V.T, (n, B, V.shape[0]))  # (n, B, C)
    if params.get("c") is not None:
        logits += params["c"]  # (n, B, C), in place on the fresh product
    return logits, seen


def forward(params: Any, inputs: Any, h0: Any, xp: Any, keep: Any = None) -> tuple[Any, Any, Cache]:
    """Hidden states (T, B, D), logits (T, B, C) and the cache for :func:`backward`.

    ``keep`` (T, B, D), optional: dropout on the non-recurrent path, multiplying the
    states before V only (0 or 1/(1-p) per entry); the recurrence never sees it.
    """
    work = inputs.shape[1] * params["W"].shape[0] ** 2  # B D^2: one recurrence product
    with _parallel.small_blas(xp, work):  # one BLAS thread for small ones (NumPy)
        # U x_t + b for every step, a fresh array that the recurrence overwrites
        # in place with s_t, step by step: no second (T, B, D) buffer.
        states = input_projection(params, inputs, xp)  # (T, B, D)
        recurrence(params["W"], states, h0, range(states.shape[0]), xp)
        logits, _ = output(params, states, keep, xp)  # (T, B, C)
    return states, logits, Cache(inputs, h0, states, keep)


def _add(grads: dict[str, Any], key: str, value: Any) -> None:
    """grads[key] = value, or += value from the second block on (in place)."""
    if key in grads:
        grads[key] += value
    else:
        grads[key] = value


def add_output_grads(grads: dict[str, Any], params: Any, dlogits: Any, seen: Any, xp: Any) -> None:
    """dV += sum_t dg_t s_t^T (eqs. 54, 71) and dc += sum_t dg_t over a block of n steps.

    ``dlogits`` (n, B, C); ``seen`` (n, B, D), what V multiplied in the forward pass.
    """
    n, B, C = dlogits.shape
    dG = xp.reshape(dlogits, (n * B, C))  # (n*B, C)
    _add(grads, "V", dG.T @ xp.reshape(seen, (n * B, seen.shape[2])))  # (C, D)
    if params.get("c") is not None:
        _add(grads, "c", column_sums(dG, xp))  # (C,)


def state_grads(params: Any, dlogits: Any, keep: Any, xp: Any) -> Any:
    """dS_t = V^T dg_t (eq. 56) for a block of n steps: a fresh (n, B, D) array,
    which :func:`reverse_recurrence` overwrites in place with dz_t."""
    n, B, C = dlogits.shape
    V = params["V"]  # (C, D)
    dS = xp.reshape(xp.reshape(dlogits, (n * B, C)) @ V, (n, B, V.shape[1]))  # (n, B, D)
    if keep is not None:
        dS *= keep  # dropout passes gradient where it passed the state
    return dS


def reverse_recurrence(W: Any, states: Any, dZ: Any, dz: Any) -> Any:
    """The backward recurrence over a block of n steps, last step first, in place.

    ``states`` (n, B, D) holds s_t; ``dZ`` (n, B, D) holds dS_t on entry and dz_t on
    return. ``dz`` (B, D) is dz of the step after the block (None after step T).
    Returns dz of the block's first step.
    """
    for t in range(states.shape[0] - 1, -1, -1):
        s = states[t, ...]  # (B, D)
        if dz is None:  # step T: nothing flows back from the future
            dz = dZ[t, ...] * (1 - s * s)  # (B, D)
        else:
            # dz_t = (dS_t + W^T dz_{t+1}) * (1 - s_t^2), eq. (62) for the tanh'
            # factor, kept at every step: the correction to eqs. (13)-(15) and (63).
            g = dz @ W  # (B, D): W^T dz_{t+1} as row vectors; a new array
            g += dZ[t, ...]  # + dS_t
            q = s * s  # (B, D)
            q *= g
            g -= q  # g * (1 - s_t^2), without a (1 - s^2) temporary
            dz = g  # (B, D)
        dZ[t, ...] = dz
    return dz


def add_weight_grads(
    grads: dict[str, Any], params: Any, dZ: Any, cache: Cache, steps: range, xp: Any
) -> None:
    """dW, dU and db over a block of steps, added to ``grads``.

    dW += sum_t dz_t s_{t-1}^T (eqs. 67, 72, s_0 = h0), dU += sum_t dz_t x_t^T
    (eqs. 69, 73), db += sum_t dz_t. ``dZ`` (n, B, D) holds dz_t for ``steps``.
    """
    S, inputs = cache.states, cache.inputs  # (T, B, D), (T, B[, M])
    n, B, D = dZ.shape
    a, b = steps.start, steps.stop
    first = 1 if a == 0 else 0  # step 1 pairs with s_0 = h0, not with a stored state
    dW = xp.reshape(dZ[first:, ...], ((n - first) * B, D)).T @ xp.reshape(
        S[a + first - 1 : b - 1, ...], ((n - first) * B, D)
    )  # (D, D)
    if a == 0 and cache.h0 is not None:
        dW += dZ[0, ...].T @ cache.h0  # (D, D)
    _add(grads, "W", dW)
    dZ2 = xp.reshape(dZ, (n * B, D))  # (n*B, D)
    if params.get("b") is not None:
        _add(grads, "b", column_sums(dZ2, xp))  # (D,)
    if is_token_ids(inputs):
        M = params["U"].shape[1]
        X = one_hot(xp.reshape(inputs[a:b, ...], (n * B,)), M, S.dtype, xp)  # (n*B, M)
    else:
        X = xp.reshape(inputs[a:b, ...], (n * B, inputs.shape[2]))  # (n*B, M)
    _add(grads, "U", dZ2.T @ X)  # (D, M)


def backward(params: Any, dlogits: Any, cache: Cache, xp: Any) -> dict[str, Any]:
    """Gradients of the loss for every parameter, given dL/dg (T, B, C).

    ``h0`` is a constant: no gradient flows into it (truncated BPTT carries it).
    """
    S = cache.states  # (T, B, D)
    steps = range(S.shape[0])
    work = S.shape[1] * params["W"].shape[0] ** 2  # B D^2
    grads: dict[str, Any] = {}
    with _parallel.small_blas(xp, work):
        seen = S if cache.keep is None else S * cache.keep  # what V saw  (T, B, D)
        add_output_grads(grads, params, dlogits, seen, xp)  # dV, dc
        dZ = state_grads(params, dlogits, cache.keep, xp)  # (T, B, D): dS_t
        reverse_recurrence(params["W"], S, dZ, None)  # now dz_t
        add_weight_grads(grads, params, dZ, cache, steps, xp)  # dW, dU, db
    return {key: grads[key] for key in params}  # same keys, same order as params
