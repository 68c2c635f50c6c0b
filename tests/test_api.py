"""The public API on every backend: same library, device and dtype out; same numbers."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, make_problem, rel_err
from torch_reference import torch_loss_and_grad

import bptt
from bptt import backends

NUMPY = backends.get_backend("numpy")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_params_same_on_every_backend(be, dtype: str) -> None:
    if not be.supports(dtype):
        pytest.skip(f"{be.name} {be.device} has no {dtype}")
    p = bptt.init_params(7, 5, 3, dtype=dtype, seed=11, backend=be.name, device=be.device)
    ref = bptt.init_params(7, 5, 3, dtype="float64", seed=11)
    assert list(p) == ["U", "W", "V", "b", "c"]
    for key in p:
        assert_close(p[key], ref[key].astype(dtype), be, rtol=0)
        assert str(p[key].dtype).endswith(dtype)


@pytest.mark.parametrize("init", ["uniform", "xavier", "orthogonal"])
def test_init_schemes(init: str) -> None:
    p = bptt.init_params(10, 8, 4, init=init, bias=False, dtype="float64", seed=3)
    assert set(p) == {"U", "W", "V"}
    assert p["U"].shape == (8, 10) and p["W"].shape == (8, 8) and p["V"].shape == (4, 8)
    if init == "orthogonal":
        np.testing.assert_allclose(p["W"] @ p["W"].T, np.eye(8), atol=1e-12)
    else:
        bound = 1 / np.sqrt(10) if init == "uniform" else np.sqrt(6 / 18)
        assert np.abs(p["U"]).max() <= bound
    again = bptt.init_params(10, 8, 4, init=init, bias=False, dtype="float64", seed=3)
    other = bptt.init_params(10, 8, 4, init=init, bias=False, dtype="float64", seed=4)
    assert all(np.array_equal(p[k], again[k]) for k in p)
    assert not np.array_equal(p["W"], other["W"])


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
@pytest.mark.parametrize("ids", [True, False], ids=["ids", "dense"])
def test_same_numbers_on_every_backend(be, head: str, ids: bool) -> None:
    """Forward, loss and grads agree with NumPy float64: 1e-12 in float64, 1e-5 in float32."""
    dtype = "float64" if be.supports("float64") else "float32"
    rtol = 1e-12 if dtype == "float64" else 1e-5
    kw = dict(T=6, B=3, M=5, D=4, C=3, head=head, ids=ids, mask=True, h0=True, dtype=dtype)
    prob = make_problem(be, np.random.default_rng(9), **kw)
    ref = make_problem(NUMPY, np.random.default_rng(9), **{**kw, "dtype": "float64"})
    states, logits = bptt.forward(prob.params, prob.inputs, h0=prob.kwargs["h0"])
    ref_states, ref_logits = bptt.forward(ref.params, ref.inputs, h0=ref.kwargs["h0"])
    assert_close(states, ref_states, be, rtol=rtol, atol=rtol)
    assert_close(logits, ref_logits, be, rtol=rtol, atol=rtol)
    loss, grads, h_last = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **prob.kwargs)
    ref_loss, ref_grads, ref_h = bptt.loss_and_grad(
        ref.params, ref.inputs, ref.targets, **ref.kwargs
    )
    assert loss.ndim == 0
    assert_close(loss, ref_loss, be, rtol=rtol)
    assert_close(h_last, ref_h, be, rtol=rtol, atol=rtol)
    assert list(grads) == list(prob.params)
    for key in grads:
        assert grads[key].dtype == prob.params[key].dtype
        assert_close(
            grads[key], ref_grads[key], be, rtol=rtol, atol=rtol * np.abs(ref_grads[key]).max()
        )


def test_chunks_with_carried_state_equal_one_pass(be) -> None:
    """Running T1 then T2 steps from the carried h_last equals running T1 + T2 steps."""
    dtype = "float64" if be.supports("float64") else "float32"
    prob = make_problem(be, np.random.default_rng(2), T=8, B=3, dtype=dtype)
    states, _ = bptt.forward(prob.params, prob.inputs)
    first, _ = bptt.forward(prob.params, prob.inputs[:5, ...])
    second, _ = bptt.forward(prob.params, prob.inputs[5:, ...], h0=first[-1, ...])
    full = be.to_numpy(states)
    np.testing.assert_allclose(
        be.to_numpy(second), full[5:], rtol=1e-6 if dtype == "float32" else 1e-14
    )


def test_mean_is_sum_over_count() -> None:
    prob = make_problem(NUMPY, np.random.default_rng(4), mask=True, reduction="sum")
    loss_sum, grads_sum, _ = bptt.loss_and_grad(
        prob.params, prob.inputs, prob.targets, **prob.kwargs
    )
    mean_kw = {**prob.kwargs, "reduction": "mean"}
    loss_mean, grads_mean, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **mean_kw)
    n = prob.host["mask"].sum()
    np.testing.assert_allclose(loss_sum / n, loss_mean, rtol=1e-14)
    assert rel_err(grads_sum["W"] / n, grads_mean["W"]) < 1e-14


def test_masked_steps_change_nothing() -> None:
    """Changing the targets at masked steps leaves loss and gradients unchanged."""
    prob = make_problem(NUMPY, np.random.default_rng(8), mask=True)
    loss, grads, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **prob.kwargs)
    other = np.where(prob.host["mask"], prob.targets, (prob.targets + 1) % 3)
    loss2, grads2, _ = bptt.loss_and_grad(prob.params, prob.inputs, other, **prob.kwargs)
    assert float(loss) == float(loss2)
    assert all(np.array_equal(grads[k], grads2[k]) for k in grads)


def test_many_to_one_classification() -> None:
    """A mask with one step per sequence: the loss is that step's loss alone."""
    prob = make_problem(NUMPY, np.random.default_rng(6), T=5, B=3, head="sigmoid", C=1)
    mask = np.zeros((5, 3), dtype=bool)
    mask[[4, 2, 3], [0, 1, 2]] = True  # last real step of each right-padded sequence
    host = {**prob.host, "mask": mask}
    loss, grads, _ = bptt.loss_and_grad(
        prob.params, prob.inputs, prob.targets[..., 0], head="sigmoid", mask=mask
    )
    ref_loss, ref_grads, _ = torch_loss_and_grad(host)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-13)
    for key in grads:
        np.testing.assert_allclose(grads[key], ref_grads[key], rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_huge_logits_are_stable(head: str) -> None:
    """Logits of 1e4: finite loss, finite gradients, the exact limits."""
    V = np.zeros((3, 2))
    V[0, 0], V[1, 0] = 1e4, -1e4  # with s = tanh(large) = 1: logits (1e4, -1e4, 0)
    params = {"U": np.full((2, 1), 50.0), "W": np.zeros((2, 2)), "V": V}
    inputs = np.zeros((1, 1), dtype=np.int64)
    if head == "softmax":
        targets = np.array([[1]])
        expected = 2e4  # -log softmax at the smallest logit
    else:
        targets = np.array([[[0.0, 1.0, 1.0]]])
        expected = (1e4 + 1e4 + np.log(2)) / 3
    loss, grads, _ = bptt.loss_and_grad(params, inputs, targets, head=head)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-12)
    assert all(np.isfinite(g).all() for g in grads.values())


def test_float32_matches_float64() -> None:
    p64 = make_problem(NUMPY, np.random.default_rng(1), T=20, B=4, D=16, dtype="float64")
    p32 = make_problem(NUMPY, np.random.default_rng(1), T=20, B=4, D=16, dtype="float32")
    l64, g64, _ = bptt.loss_and_grad(p64.params, p64.inputs, p64.targets)
    l32, g32, _ = bptt.loss_and_grad(p32.params, p32.inputs, p32.targets)
    assert g32["W"].dtype == np.float32 and l32.dtype == np.float32
    np.testing.assert_allclose(l32, l64, rtol=1e-6)
    for key in g64:
        np.testing.assert_allclose(
            g32[key], g64[key], rtol=1e-4, atol=1e-6 * np.abs(g64[key]).max()
        )


def test_no_bias_is_the_seed_model() -> None:
    prob = make_problem(NUMPY, np.random.default_rng(0), bias=False, reduction="sum")
    assert set(prob.params) == {"U", "W", "V"}
    _, grads, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, reduction="sum")
    assert set(grads) == {"U", "W", "V"}
