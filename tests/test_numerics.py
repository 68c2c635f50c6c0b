"""Numerical robustness: saturation, long sequences, exploding gradients and clipping."""

from __future__ import annotations

import numpy as np

import bptt
from bptt import optim


def _scaled(params: dict, radius: float) -> dict:
    W = params["W"]
    return {**params, "W": W * (radius / np.max(np.abs(np.linalg.eigvals(W))))}


def test_saturated_tanh_is_finite_and_exact() -> None:
    """|z| > 50: tanh is exactly +-1, tanh' exactly 0, and nothing turns into NaN."""
    params = bptt.init_params(3, 4, 3, dtype="float64", seed=1)
    params["U"] = np.where(params["U"] >= 0, 100.0, -100.0)  # |z| >= 98
    ids = np.random.default_rng(0).integers(0, 3, (20, 2))
    states, _ = bptt.forward(params, ids)
    assert np.all(np.abs(states) == 1.0)
    loss, grads, _ = bptt.loss_and_grad(params, ids, ids)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
    np.testing.assert_array_equal(grads["W"], 0.0)  # no gradient passes a saturated unit
    assert bptt.gradcheck(params, ids[:4], ids[:4], eps=1e-4) < 1e-9


def test_long_sequence_full_bptt() -> None:
    """T = 5000 in one pass: no overflow, and the same result as two chunks' forward."""
    T, B = 5000, 2
    params = bptt.init_params(8, 16, 8, dtype="float64", seed=2)
    ids = np.random.default_rng(1).integers(0, 8, (T, B))
    with np.errstate(all="raise"):  # any overflow or invalid operation fails the test
        loss, grads, h_last = bptt.loss_and_grad(params, ids, ids, reduction="sum")
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
    first, _ = bptt.forward(params, ids[:2500])
    second, _ = bptt.forward(params, ids[2500:], h0=first[-1])
    np.testing.assert_allclose(second[-1], h_last, rtol=1e-12, atol=1e-14)


def test_exploding_gradients_are_clipped() -> None:
    """W with spectral radius 3: the raw gradient norm grows with T; clipping keeps the
    step bounded and training stays finite."""
    base = _scaled(bptt.init_params(4, 32, 4, dtype="float64", seed=3), 3.0)
    base["U"] = base["U"] * 0.01  # small inputs keep the units off saturation, so tanh' ~ 1
    rng = np.random.default_rng(2)
    norms = []
    for T in (2, 4, 8):
        ids = rng.integers(0, 4, (T, 4))
        _, grads, _ = bptt.loss_and_grad(base, ids, ids, reduction="sum")
        norms.append(float(optim.global_norm(grads)))
    assert norms[0] < norms[1] < norms[2]
    assert norms[2] > 10 * norms[0]

    clip, opt = optim.clip_by_global_norm(1.0), optim.sgd(0.5)
    params, state = base, opt.init(base)
    for _ in range(30):
        ids = rng.integers(0, 4, (20, 4))
        _, grads, _ = bptt.loss_and_grad(params, ids, ids)
        clipped, _ = clip.update(grads, clip.init(grads))
        assert float(optim.global_norm(clipped)) <= 1.0 + 1e-12
        updates, state = opt.update(clipped, state, params)
        params = optim.apply_updates(params, updates)
    assert all(np.isfinite(p).all() for p in params.values())


def test_vanishing_gradients_with_small_radius() -> None:
    """W = 0.5 Q, Q orthogonal: the gradient reaching step 1 from a loss at step L
    shrinks at least like 0.5^(L-1), since |tanh'| <= 1 and ||W|| = 0.5."""
    params = bptt.init_params(2, 16, 4, dtype="float64", seed=4, init="orthogonal")
    params["W"] = params["W"] * 0.5

    def first_step_gradient(L: int) -> float:
        x = np.zeros((L, 1, 2))
        x[0, 0, 0] = 1.0  # only step 1 feeds input channel 0, so dU[:, 0] = dz_1
        x[1:, 0, 1] = 1.0
        mask = np.zeros((L, 1), dtype=bool)
        mask[-1] = True  # the loss at step L only
        _, grads, _ = bptt.loss_and_grad(params, x, np.ones((L, 1), dtype=np.int64), mask=mask)
        return float(np.linalg.norm(grads["U"][:, 0]))

    near, far = first_step_gradient(2), first_step_gradient(12)
    assert 0 < far < near * 0.5**8
