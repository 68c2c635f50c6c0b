"""Optimizers against torch.optim, on every backend; clipping without host sync."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bptt import optim

CASES = {
    "sgd": (dict(), lambda p, lr: torch.optim.SGD(p, lr=lr)),
    "sgd-momentum": (
        dict(momentum=0.9, weight_decay=0.01),
        lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=0.01),
    ),
    "rmsprop": (
        dict(decay=0.95),
        lambda p, lr: torch.optim.RMSprop(p, lr=lr, alpha=0.95, eps=1e-8),
    ),
    "adam": (dict(), lambda p, lr: torch.optim.Adam(p, lr=lr, eps=1e-8)),
    "adamw": (
        dict(weight_decay=0.1),
        lambda p, lr: torch.optim.AdamW(p, lr=lr, eps=1e-8, weight_decay=0.1),
    ),
}


def _host(rng: np.random.Generator) -> tuple[dict, list[dict]]:
    params = {"W": rng.standard_normal((4, 4)), "b": rng.standard_normal(4)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(5)]
    return params, grads


def _run(be, opt: optim.Optimizer, params: dict, grads: list[dict]) -> dict:
    dtype = "float64" if be.supports("float64") else "float32"
    p = {k: be.asarray(v, dtype=dtype) for k, v in params.items()}
    state = opt.init(p)
    for g in grads:
        p, state = opt.update(p, {k: be.asarray(v, dtype=dtype) for k, v in g.items()}, state)
    assert state["step"] == len(grads)
    for v in p.values():
        assert v.device == be.device
    return {k: be.to_numpy(v) for k, v in p.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_optim(be, case: str) -> None:
    options, make_torch = CASES[case]
    name = case.split("-")[0].replace("adamw", "adam")
    params, grads = _host(np.random.default_rng(0))
    ours = _run(be, optim.make(name, 0.01, **options), params, grads)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    topt = make_torch(list(tp.values()), 0.01)
    for g in grads:
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        topt.step()
    rtol = 1e-12 if be.supports("float64") else 1e-5
    for k in params:
        np.testing.assert_allclose(ours[k], tp[k].detach().numpy(), rtol=rtol, atol=rtol)


def test_adagrad_is_min_char_rnn() -> None:
    """mem += g*g; p -= lr * g / sqrt(mem + 1e-8), as in min-char-rnn."""
    params, grads = _host(np.random.default_rng(1))
    from helpers import NUMPY_BACKEND

    ours = _run(NUMPY_BACKEND, optim.adagrad(0.1), params, grads)
    mem = {k: np.zeros_like(v) for k, v in params.items()}
    ref = {k: v.copy() for k, v in params.items()}
    for g in grads:
        for k in ref:
            mem[k] += g[k] * g[k]
            ref[k] -= 0.1 * g[k] / np.sqrt(mem[k] + 1e-8)
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-14)


def test_clip_by_global_norm(be) -> None:
    dtype = "float64" if be.supports("float64") else "float32"
    grads = {"a": be.asarray([3.0, 0.0], dtype=dtype), "b": be.asarray([[4.0]], dtype=dtype)}
    clipped, norm = optim.clip_by_global_norm(grads, 1.0)
    assert norm.ndim == 0 and norm.device == be.device
    np.testing.assert_allclose(be.to_numpy(norm), 5.0)
    np.testing.assert_allclose(be.to_numpy(clipped["a"]), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(be.to_numpy(clipped["b"]), [[0.8]], rtol=1e-6)
    same, _ = optim.clip_by_global_norm(grads, 10.0)  # under the limit: untouched
    np.testing.assert_array_equal(be.to_numpy(same["a"]), [3.0, 0.0])


def test_schedule_and_errors() -> None:
    sched = optim.exponential_decay(1.0, rate=0.5, every=10)
    assert sched(0) == 1.0 and abs(sched(10) - 0.5) < 1e-15 and abs(sched(20) - 0.25) < 1e-15
    with pytest.raises(ValueError, match="optimizer"):
        optim.make("lbfgs", 0.1)
    with pytest.raises(ValueError, match="lr"):
        optim.make("adam", -1.0)
