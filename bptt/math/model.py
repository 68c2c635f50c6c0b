"""One recurrent layer, batched and time-major: the forward pass and the BPTT backward pass.

Pure math: every function takes the array namespace ``xp`` and imports nothing
else, does no validation (:mod:`bptt.api.calls` checks first) and never writes into an
array it was given, so the same code runs on NumPy, CuPy, torch, array_api_strict
and on JAX's immutable arrays (also under ``jax.jit``). How a step is executed
(threads, blocks of steps, parts of the batch) is decided outside, in
:mod:`bptt.execution.schedules` and :mod:`bptt.execution.numpy_exec`.

Shapes: T steps, B sequences, M inputs, D hidden units, C outputs.

Forward (eqs. 19-21, plus the optional biases b and c)::

    z_t = U x_t + W s_{t-1} + b      s_t = f(z_t)      g_t = V s_t + c

with f = tanh (the default) or relu (eq. B17); f' is computed from s_t alone.

Backward, a reverse recurrence over t = T..1 (equal to the sums of eqs. 57-69
without their O(T^2) cost, with the tanh' factor that eqs. 13-15 drop, kept inside
the product that eq. 63 wrongly reorders)::

    dz_t = (dS_t + W^T dz_{t+1}) * f'(z_t),   dz_{T+1} = 0,   f'(z_t) = 1 - s_t^2 for tanh

where dS_t = V^T dg_t (eq. 56) is the loss gradient reaching s_t from its own
output. Only the two recurrences are sequential; everything else is one matrix
product over all the rows of the steps it covers. Stacked and bidirectional
layers are compositions of these functions (:mod:`bptt.math.layers`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import device  # x.device, or None for a JAX tracer (jit places it)

from .scan import Scan, python_scan

__all__ = [
    "NONLINEARITIES",
    "Cache",
    "activation",
    "backward",
    "column_sums",
    "derivative",
    "forward",
    "initial_state_grads",
    "input_grads",
    "input_projection",
    "is_token_ids",
    "one_hot",
    "output",
    "output_grads",
    "recurrence",
    "reverse_recurrence",
    "state_grads",
    "weight_grads",
]

NONLINEARITIES = ("tanh", "relu")


class Cache(NamedTuple):
    """What the backward pass needs from the forward pass."""

    inputs: Any  # (T, B) token ids or (T, B, M) dense vectors
    states: Any  # (T+1, B, D): s_0 (h0, or zeros) .. s_T
    dropout_mask: Any  # (T, B, D) multipliers on the states before V, or None


def is_token_ids(inputs: Any) -> bool:
    return inputs.ndim == 2


def one_hot(ids: Any, n: int, dtype: Any, xp: Any) -> Any:
    """(N,) integer ids -> (N, n) one-hot rows (the seed's x_t, stacked).

    Rows of the identity gathered when that is no larger than the result (n <= N),
    else every id compared with every class (a vocabulary larger than N).
    """
    if n <= ids.shape[0]:
        return xp.take(xp.eye(n, dtype=dtype, device=device(ids)), ids, axis=0)  # (N, n)
    classes = xp.arange(n, device=device(ids))  # (n,)
    return xp.astype(ids[:, None] == classes[None, :], dtype)  # (N, n)


def column_sums(x: Any, xp: Any) -> Any:
    """Sum over the rows of x (N, K): (K,), one reduction."""
    return xp.sum(x, axis=0)  # (K,)


def activation(nonlinearity: str, like: Any, xp: Any) -> Any:
    """The elementwise f of eq. (20) as a function of one array: ``xp.tanh``, or relu
    (eq. B17) as ``maximum(z, 0)`` against a 0-d zero of ``like``'s dtype and device
    (one operation per step, as tanh; no value-dependent control flow)."""
    if nonlinearity == "tanh":
        return xp.tanh
    zero = xp.zeros((), dtype=like.dtype, device=device(like))  # ()
    return lambda z: xp.maximum(z, zero)


def derivative(s: Any, nonlinearity: str, xp: Any) -> Any:
    """f'(z) from the output s = f(z), any shape: 1 - s^2 for tanh (eq. 62), and for
    relu the 0/1 indicator of s > 0 as a number (eq. B17), a cast, not a branch."""
    if nonlinearity == "tanh":
        return 1 - s * s
    return xp.astype(s > 0, s.dtype)


def input_projection(params: Any, inputs: Any, xp: Any) -> Any:
    """U x_t + b for every step at once, (T, B, D): the input terms of eq. (19), (B1).

    With token ids, U x_t is column x_t of U (eq. B4): a gather from an (M, D) table
    of U's columns with b already added (M additions of b instead of T B).
    """
    U, b = params["U"], params.get("b")  # (D, M), (D,) or None
    D, M = U.shape
    if is_token_ids(inputs):
        T, B = inputs.shape
        table = U.T  # (M, D): row m is column m of U, a view
        if b is not None:
            table = table + b  # (M, D), a fresh row-major array
        xu = xp.take(table, xp.reshape(inputs, (T * B,)), axis=0)  # (T*B, D)
    else:
        T, B, _ = inputs.shape
        xu = xp.reshape(inputs, (T * B, M)) @ U.T  # (T*B, D)
        if b is not None:
            xu = xu + b  # (T*B, D)
    return xp.reshape(xu, (T, B, D))


def recurrence(
    W: Any, xu: Any, s: Any, xp: Any, nonlinearity: str = "tanh", *, scan: Scan = python_scan
) -> Any:
    """Eqs. (19)-(20) over n steps: the states s_0 .. s_n, (n+1, B, D).

    ``xu`` (n, B, D) holds U x_t + b; ``s`` (B, D) is s_0, the state before the first
    step (None: zeros, and the first step, peeled, skips its product). Per step: one
    product, one sum, one tanh (or relu, eq. B17); ``scan`` runs the steps
    (:mod:`bptt.math.scan`: a Python loop, or ``jax.lax.scan``). s_0 leads the stack so
    that dW is one product (eq. B13).
    """
    WT = W.T  # (D, D), transposed once, not per step
    f = activation(nonlinearity, xu, xp)

    def step(s: Any, x: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        z = s @ WT  # (B, D), a fresh array
        z += x[0]  # + U x_t + b
        s = f(z)  # (B, D), eq. (20)
        return s, (s,)

    if s is None:  # s_0 = 0: step 1 is f(U x_1 + b), no product
        s = f(xu[0, ...])  # (B, D)
        head = [xp.zeros_like(s), s]  # s_0, s_1
        xu = xu[1:, ...]  # (n-1, B, D)
    else:
        head = [s]  # s_0
    head = [h[None, ...] for h in head]  # (1, B, D) each, views
    if xu.shape[0] == 0:
        return xp.concat(head, axis=0)  # (n+1, B, D)
    _, (S,) = scan(step, s, (xu,), xp)  # (n or n-1, B, D): the only sequential part
    return xp.concat([*head, S], axis=0)  # (n+1, B, D)


def output(params: Any, states: Any, dropout_mask: Any, xp: Any) -> tuple[Any, Any]:
    """Logits g_t = V s_t + c, eqs. (21), (B3), for n steps: ``(logits, out_states)``.

    ``dropout_mask`` (n, B, D) or None multiplies the states on the output path only;
    ``out_states`` (n, B, D) is what V multiplied (``states`` itself without dropout).
    """
    n, B, D = states.shape
    V = params["V"]  # (C, D)
    out_states = states if dropout_mask is None else states * dropout_mask  # (n, B, D)
    logits = xp.reshape(out_states, (n * B, D)) @ V.T  # (n*B, C)
    if params.get("c") is not None:
        logits += params["c"]  # (n*B, C), in place on the fresh product
    return xp.reshape(logits, (n, B, V.shape[0])), out_states


def forward(
    params: Any, inputs: Any, h0: Any, xp: Any, dropout_mask: Any = None,
    nonlinearity: str = "tanh",
) -> tuple[Any, Any, Cache]:  # fmt: skip
    """Hidden states s_1 .. s_T (T, B, D), logits (T, B, C) and the cache for
    :func:`backward`."""
    xu = input_projection(params, inputs, xp)  # (T, B, D)
    states = recurrence(params["W"], xu, h0, xp, nonlinearity)  # (T+1, B, D)
    logits, _ = output(params, states[1:, ...], dropout_mask, xp)  # (T, B, C)
    return states[1:, ...], logits, Cache(inputs, states, dropout_mask)


def output_grads(params: Any, dlogits: Any, out_states: Any, xp: Any) -> dict[str, Any]:
    """dV = sum_t dg_t s_t^T (eqs. 54, 71, B10) and dc = sum_t dg_t over n steps.

    ``dlogits`` (n, B, C); ``out_states`` (n, B, D), what V multiplied.
    """
    n, B, C = dlogits.shape
    dG = xp.reshape(dlogits, (n * B, C))  # (n*B, C)
    grads = {"V": dG.T @ xp.reshape(out_states, (n * B, out_states.shape[2]))}  # (C, D)
    if params.get("c") is not None:
        grads["c"] = column_sums(dG, xp)  # (C,)
    return grads


def state_grads(params: Any, dlogits: Any, dropout_mask: Any, xp: Any) -> Any:
    """dS_t = V^T dg_t (eqs. 56, B11) for n steps, (n, B, D), through the dropout."""
    n, B, C = dlogits.shape
    V = params["V"]  # (C, D)
    dS = xp.reshape(xp.reshape(dlogits, (n * B, C)) @ V, (n, B, V.shape[1]))  # (n, B, D)
    if dropout_mask is not None:
        dS = dS * dropout_mask  # gradient passes where the state passed
    return dS


def reverse_recurrence(
    W: Any, states: Any, dS: Any, dz: Any, xp: Any, nonlinearity: str = "tanh", *,
    scan: Scan = python_scan,
) -> Any:  # fmt: skip
    """The backward recurrence (eqs. 62, B12) over n steps, last step first: dz (n, B, D).

    ``states`` (n+1, B, D) holds s_0 .. s_n as :func:`recurrence` returns them (s_0
    unused), ``dS`` (n, B, D) the output gradients; ``dz`` (B, D) is dz of the step
    after these (None after step T: the last step, peeled, has no product). tanh' =
    1 - s^2 (relu': s > 0, eq. B17) for all n steps is one pass first; then each step
    is one product, one sum and one product by f', run by ``scan`` in reverse.
    """
    f_prime = derivative(states[1:, ...], nonlinearity, xp)  # (n, B, D), eq. (62) or (B17)

    def step(dz: Any, x: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        # dz_t = (dS_t + W^T dz_{t+1}) * (1 - s_t^2): the tanh' factor that eqs.
        # (13)-(15) drop, inside the product that eq. (63) reorders
        g = dz @ W  # (B, D): W^T dz_{t+1} as row vectors, a fresh array
        g += x[0]  # + dS_t
        dz = g * x[1]  # (B, D)
        return dz, (dz,)

    tail = []
    if dz is None:  # step T: nothing flows back from the future
        dz = dS[-1, ...] * f_prime[-1, ...]  # (B, D)
        tail = [dz[None, ...]]  # (1, B, D), a view
        dS, f_prime = dS[:-1, ...], f_prime[:-1, ...]  # (n-1, B, D)
    if dS.shape[0] == 0:
        return xp.concat(tail, axis=0)  # (n, B, D)
    _, (dZ,) = scan(step, dz, (dS, f_prime), xp, reverse=True)  # (n or n-1, B, D)
    return xp.concat([dZ, *tail], axis=0) if tail else dZ  # (n, B, D)


def weight_grads(params: Any, dZ: Any, states: Any, inputs: Any, xp: Any) -> dict[str, Any]:
    """dW, db and dU over n steps (eqs. 67, 69, 72, 73, B13), one product each.

    dW = sum_t dz_t s_{t-1}^T, dU = sum_t dz_t x_t^T, db = sum_t dz_t; ``dZ`` (n, B, D),
    ``states`` (n+1, B, D) s_0 .. s_n of the same steps, ``inputs`` their x_t.
    """
    n, B, D = dZ.shape
    dZ2 = xp.reshape(dZ, (n * B, D))  # (n*B, D)
    grads = {"W": dZ2.T @ xp.reshape(states[:-1, ...], (n * B, D))}  # (D, D)
    if params.get("b") is not None:
        grads["b"] = column_sums(dZ2, xp)  # (D,)
    if is_token_ids(inputs):
        M = params["U"].shape[1]
        X = one_hot(xp.reshape(inputs, (n * B,)), M, dZ.dtype, xp)  # (n*B, M)
    else:
        X = xp.reshape(inputs, (n * B, inputs.shape[2]))  # (n*B, M)
    grads["U"] = dZ2.T @ X  # (D, M)
    return grads


def input_grads(U: Any, dZ: Any, xp: Any) -> Any:
    """dL/dx_t = U^T dz_t for n steps of dense inputs (eq. B22): (n, B, M), one product.

    The gradient a layer sends to what it reads: the user's dense inputs, or the
    layer below in a stack (eq. B20).
    """
    n, B, D = dZ.shape
    dX = xp.reshape(dZ, (n * B, D)) @ U  # (n*B, M): row form of U^T dz_t
    return xp.reshape(dX, (n, B, U.shape[1]))  # (n, B, M)


def initial_state_grads(W: Any, dz_first: Any) -> Any:
    """dL/ds_0 = W^T dz_1 (eq. B23) as rows: (B, D). s_0 enters only step 1's z."""
    return dz_first @ W  # (B, D)


def backward(
    params: Any, dlogits: Any, cache: Cache, xp: Any, nonlinearity: str = "tanh"
) -> dict[str, Any]:
    """Gradients of every parameter, given dL/dg (T, B, C); h0 is a constant."""
    S, mask = cache.states, cache.dropout_mask  # (T+1, B, D), (T, B, D) or None
    out_states = S[1:, ...] if mask is None else S[1:, ...] * mask  # what V saw
    grads = output_grads(params, dlogits, out_states, xp)  # dV, dc
    dS = state_grads(params, dlogits, mask, xp)  # (T, B, D)
    dZ = reverse_recurrence(params["W"], S, dS, None, xp, nonlinearity)  # (T, B, D)
    grads.update(weight_grads(params, dZ, S, cache.inputs, xp))  # dW, dU, db
    return {key: grads[key] for key in params}  # same keys, same order as params
