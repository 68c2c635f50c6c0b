"""Optimizers (bptt.optim): against torch.optim on every backend; composition, the
two kinds of weight decay, argument checks, state round trips; no host sync."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bptt import optim

CASES = {
    "sgd": (dict(), lambda p, lr: torch.optim.SGD(p, lr=lr)),
    "sgd-momentum-l2": (  # torch's weight_decay is an L2 penalty (coupled) for SGD
        dict(momentum=0.9, l2=0.01),
        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=0.01),
    ),
    "rmsprop": (
        dict(decay=0.95),
        lambda p, lr: torch.optim.RMSprop(p, lr=lr, alpha=0.95, eps=1e-8),
    ),
    "rmsprop-l2": (
        dict(decay=0.95, l2=0.05),
        lambda p, lr: torch.optim.RMSprop(p, lr=lr, alpha=0.95, eps=1e-8, weight_decay=0.05),
    ),
    "adam": (dict(), lambda p, lr: torch.optim.Adam(p, lr=lr, eps=1e-8)),
    "adam-l2": (  # torch's Adam(weight_decay) is coupled
        dict(l2=0.1),
        lambda p, lr: torch.optim.Adam(p, lr=lr, eps=1e-8, weight_decay=0.1),
    ),
    "adam-weight_decay": (  # decoupled: AdamW
        dict(weight_decay=0.1),
        lambda p, lr: torch.optim.AdamW(p, lr=lr, eps=1e-8, weight_decay=0.1),
    ),
}


def _host(rng: np.random.Generator) -> tuple[dict, list[dict]]:
    params = {"W": rng.standard_normal((4, 4)), "b": rng.standard_normal(4)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(5)]
    return params, grads


def _run(be, opt: optim.GradientTransformation, params: dict, grads: list[dict]) -> dict:
    dtype = "float64" if be.supports("float64") else "float32"
    p = {k: be.asarray(v, dtype=dtype) for k, v in params.items()}
    state = opt.init(p)
    for g in grads:
        updates, state = opt.update({k: be.asarray(v, dtype=dtype) for k, v in g.items()},
                                    state, p)  # fmt: skip
        p = optim.apply_updates(p, updates)
    for path, v in [*p.items(), *optim.state_arrays(state).items()]:
        assert v.device == be.device, path
        assert v.dtype == getattr(be.xp, dtype) or path.endswith("count"), path
    return {k: be.to_numpy(v) for k, v in p.items()}


def _torch(make_torch, params: dict, grads: list[dict], lr: float) -> dict:
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    topt = make_torch(list(tp.values()), lr)
    for g in grads:
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        topt.step()
    return {k: t.detach().numpy() for k, t in tp.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_optim(be, case: str) -> None:
    options, make_torch = CASES[case]
    params, grads = _host(np.random.default_rng(0))
    ours = _run(be, optim.make(case.split("-")[0], 0.01, **options), params, grads)
    ref = _torch(make_torch, params, grads, 0.01)
    rtol = 1e-12 if be.supports("float64") else 1e-5
    for k in params:
        np.testing.assert_allclose(ours[k], ref[k], rtol=rtol, atol=rtol)


def test_scheduled_rate_matches_torch() -> None:
    """lr_k = lr 0.5^(k/2) against torch's LambdaLR over 5 Adam steps."""
    from helpers import NUMPY_BACKEND

    params, grads = _host(np.random.default_rng(2))
    sched = optim.exponential_decay(0.01, rate=0.5, every=2)
    ours = _run(NUMPY_BACKEND, optim.adam(sched), params, grads)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    topt = torch.optim.Adam(list(tp.values()), lr=0.01, eps=1e-8)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(topt, lambda k: 0.5 ** (k / 2))
    for g in grads:
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        topt.step()
        lr_sched.step()
    for k in params:
        np.testing.assert_allclose(ours[k], tp[k].detach().numpy(), rtol=1e-12)


def test_adagrad_is_min_char_rnn() -> None:
    """mem += g*g; p -= lr * g / sqrt(mem + 1e-8), as in min-char-rnn."""
    from helpers import NUMPY_BACKEND

    params, grads = _host(np.random.default_rng(1))
    ours = _run(NUMPY_BACKEND, optim.adagrad(0.1), params, grads)
    mem = {k: np.zeros_like(v) for k, v in params.items()}
    ref = {k: v.copy() for k, v in params.items()}
    for g in grads:
        for k in ref:
            mem[k] += g[k] * g[k]
            ref[k] -= 0.1 * g[k] / np.sqrt(mem[k] + 1e-8)
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-14)


def test_one_flat_array_equals_the_dict() -> None:
    """The same optimizer on one concatenated vector gives the same numbers: a tree may
    be a single array, so an update's cost need not grow with the number of arrays."""
    params, grads = _host(np.random.default_rng(3))
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.01, weight_decay=0.1))
    by_key = {k: v.copy() for k, v in params.items()}
    flat = np.concatenate([v.reshape(-1) for v in params.values()])
    s1, s2 = opt.init(by_key), opt.init(flat)
    for g in grads:
        u1, s1 = opt.update(g, s1, by_key)
        by_key = optim.apply_updates(by_key, u1)
        u2, s2 = opt.update(np.concatenate([v.reshape(-1) for v in g.values()]), s2, flat)
        flat = optim.apply_updates(flat, u2)
    joined = np.concatenate([v.reshape(-1) for v in by_key.values()])
    np.testing.assert_allclose(flat, joined, rtol=1e-14)


def test_clip_by_global_norm(be) -> None:
    dtype = "float64" if be.supports("float64") else "float32"
    grads = {"a": be.asarray([3.0, 0.0], dtype=dtype), "b": be.asarray([[4.0]], dtype=dtype)}
    clip = optim.clip_by_global_norm(1.0)
    clipped, state = clip.update(grads, clip.init(grads))
    norm = optim.last_norm(state)
    assert norm.ndim == 0 and norm.device == be.device
    np.testing.assert_allclose(be.to_numpy(norm), 5.0)
    np.testing.assert_allclose(be.to_numpy(clipped["a"]), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(be.to_numpy(clipped["b"]), [[0.8]], rtol=1e-6)
    loose = optim.clip_by_global_norm(10.0)
    same, _ = loose.update(grads, loose.init(grads))  # under the limit: untouched
    np.testing.assert_array_equal(be.to_numpy(same["a"]), [3.0, 0.0])
    record = optim.clip_by_global_norm(None)  # only records the norm
    same, state = record.update(grads, record.init(grads))
    np.testing.assert_array_equal(be.to_numpy(same["b"]), [[4.0]])
    np.testing.assert_allclose(be.to_numpy(optim.last_norm(state)), 5.0)


def test_schedule_is_evaluated_on_the_device() -> None:
    sched = optim.exponential_decay(1.0, rate=0.5, every=10)
    count = np.asarray(20.0)
    assert abs(float(sched(count)) - 0.25) < 1e-15 and abs(float(sched(np.asarray(0.0))) - 1) == 0
    assert optim.constant_schedule(0.3)(count) == 0.3


BAD = [
    (lambda: optim.adam(-1.0), "lr: expected a positive"),
    (lambda: optim.adam(math.nan), "lr: expected a positive"),
    (lambda: optim.sgd(0.1, momentum=5), r"momentum: expected a number in \[0, 1\)"),
    (lambda: optim.sgd(0.1, momentum=-0.1), "momentum"),
    (lambda: optim.adam(0.1, b1=1.0), r"b1: expected a number in \[0, 1\)"),
    (lambda: optim.adam(0.1, b2=math.inf), "b2"),
    (lambda: optim.adam(0.1, eps=0.0), "eps: expected a positive"),
    (lambda: optim.rmsprop(0.1, decay=-0.5), "decay"),
    (lambda: optim.adam(0.1, weight_decay=-1.0), "weight_decay: expected a number >= 0"),
    (lambda: optim.sgd(0.1, l2=math.nan), "l2: expected a number >= 0"),
    (lambda: optim.clip_by_global_norm(-1.0), "max_norm: expected a positive"),
    (lambda: optim.clip_by_global_norm(0.0), "max_norm"),
    (lambda: optim.exponential_decay(0.1, rate=-0.5, every=10), r"rate: expected a factor"),
    (lambda: optim.exponential_decay(0.1, rate=1.5, every=10), "rate"),
    (lambda: optim.exponential_decay(0.1, rate=0.5, every=0), "every: expected a positive"),
    (lambda: optim.make("lbfgs", 0.1), "optimizer: expected one of"),
    (lambda: optim.sgd(True), "lr"),
]


@pytest.mark.parametrize(("make", "message"), BAD, ids=[m for _, m in BAD])
def test_constructors_refuse_bad_arguments(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_update_refuses_gradients_unlike_the_parameters() -> None:
    params = {"W": np.zeros((2, 2)), "b": np.zeros(2)}
    opt = optim.adam(0.1)
    state = opt.init(params)
    for grads, message in (
        ({"W": np.zeros((2, 2))}, "keys"),
        ({"W": np.zeros((2, 2)), "b": np.zeros(3)}, r"grads\['b'\]: shape \(3,\)"),
        ({"W": np.zeros((1, 2)), "b": np.zeros(2)}, r"grads\['W'\]: shape \(1, 2\)"),
        ({"b": np.zeros(2), "W": np.zeros((2, 2))}, "keys"),
    ):
        with pytest.raises(ValueError, match=message):
            opt.update(grads, state, params)
    with pytest.raises(TypeError, match="dtype"):
        opt.update({"W": np.zeros((2, 2), np.float32), "b": np.zeros(2)}, state, params)
    with pytest.raises(TypeError, match="params are required"):
        opt.update(params, state)


def test_state_round_trips_through_named_arrays() -> None:
    params, grads = _host(np.random.default_rng(4))
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(0.1, momentum=0.9))
    state = opt.init(params)
    _, state = opt.update(grads[0], state, params)
    arrays = optim.state_arrays(state)
    assert set(arrays) == {"0/norm", "1/1/trace/W", "1/1/trace/b"}  # EmptyStates hold none
    again = optim.state_from_arrays(opt.init(params), arrays, lambda path, a, like: a)
    for path, value in optim.state_arrays(again).items():
        np.testing.assert_array_equal(value, arrays[path])
    assert type(again[1][1]).__name__ == "TraceState"
