"""bptt.vjp's contract and the checks of stacks: what is refused, and with what message."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import NUMPY_BACKEND, make_problem

import bptt
from bptt import backends
from bptt.math.heads import HEADS, loss_weights, reduce


def _stack(**kw):
    args = dict(T=4, B=3, M=4, D=5, C=3, layers=2, bidirectional=True, h0=True, ids=False)
    return make_problem(NUMPY_BACKEND, np.random.default_rng(0), **{**args, **kw})


def test_loss_and_grad_is_the_pullback_of_its_head() -> None:
    """The single schedule's step is vjp + the built-in head + the pullback: the same
    bits, for the default model and for a stack."""
    for prob in (make_problem(NUMPY_BACKEND, np.random.default_rng(1), T=6), _stack()):
        loss, grads, h_last = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets,
                                                 schedule="single", **prob.kwargs)  # fmt: skip
        out, pullback = bptt.vjp(prob.params, prob.inputs, h0=prob.kwargs.get("h0"))
        terms, dlogits = HEADS["softmax"](out.logits, prob.targets, np)
        T, B, C = out.logits.shape
        weights = loss_weights(None, (T, B, C), head="softmax", reduction="mean",
                               dtype=np.float64, xp=np)  # fmt: skip
        mine, dlogits = reduce(terms, dlogits, weights, np)
        cot = pullback(dlogits)
        assert float(mine) == float(loss)
        np.testing.assert_array_equal(out.h_last, h_last)
        for key in grads:
            np.testing.assert_array_equal(cot.params[key], grads[key], err_msg=key)
        again = pullback(dlogits)  # a pullback can be called again: nothing was consumed
        for key in grads:
            np.testing.assert_array_equal(again.params[key], grads[key], err_msg=key)


def test_forward_returns_every_cells_last_state() -> None:
    prob = _stack(T=7)
    states, logits, h_last = bptt.forward(prob.params, prob.inputs, h0=prob.kwargs["h0"],
                                          return_state=True)  # fmt: skip
    assert states.shape == (7, 3, 10) and logits.shape == (7, 3, 3) and h_last.shape == (4, 3, 5)
    np.testing.assert_array_equal(states[-1, :, :5], h_last[2])  # layer 1 forward: s_T
    np.testing.assert_array_equal(states[0, :, 5:], h_last[3])  # layer 1 reverse: at t = 1
    # chunks with the carried states equal one pass
    first = bptt.forward(prob.params, prob.inputs[:3], h0=prob.kwargs["h0"], return_state=True)
    uni = _stack(bidirectional=False, T=7)
    whole = bptt.forward(uni.params, uni.inputs, h0=uni.kwargs["h0"], return_state=True)
    a = bptt.forward(uni.params, uni.inputs[:3], h0=uni.kwargs["h0"], return_state=True)
    b = bptt.forward(uni.params, uni.inputs[3:], h0=a[2], return_state=True)
    np.testing.assert_allclose(np.concatenate([a[1], b[1]]), whole[1], rtol=1e-13)
    np.testing.assert_allclose(b[2], whole[2], rtol=1e-13)
    assert first[2].shape == (4, 3, 5)
    assert len(bptt.forward(prob.params, prob.inputs, h0=prob.kwargs["h0"])) == 2


def test_d_h0_without_an_h0_is_the_gradient_at_zero() -> None:
    prob = _stack()
    out, pullback = bptt.vjp(prob.params, prob.inputs)
    zeros = np.zeros((4, 3, 5))
    _, pullback0 = bptt.vjp(prob.params, prob.inputs, h0=zeros)
    dl = np.ones_like(out.logits)
    np.testing.assert_allclose(pullback(dl, with_h0=True).h0, pullback0(dl, with_h0=True).h0,
                               rtol=1e-14, atol=1e-16)  # fmt: skip
    single = make_problem(NUMPY_BACKEND, np.random.default_rng(2), ids=False)
    _, pb = bptt.vjp(single.params, single.inputs)
    cot = pb(np.ones((5, 3, 3)), with_inputs=True, with_h0=True)
    assert cot.h0.shape == (3, 6) and cot.inputs.shape == (5, 3, 4)
    assert pb(np.ones((5, 3, 3))).h0 is None and pb(np.ones((5, 3, 3))).inputs is None


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda pb, o: pb(), TypeError, "give dlogits"),
        (lambda pb, o: pb(np.ones((4, 3, 2))), ValueError, "dlogits: expected shape (T, B, C)"),
        (lambda pb, o: pb(dstates=np.ones((4, 3, 5))), ValueError, "dstates: expected shape"),
        (lambda pb, o: pb(np.ones(o.logits.shape, np.float32)), TypeError, "dtype float32"),
        (lambda pb, o: pb(np.full(o.logits.shape, np.nan)), ValueError, "dlogits: contains NaN"),
    ],
    ids=["none", "shape", "dstates-shape", "dtype", "nan"],
)
def test_pullback_refuses_bad_cotangents(call, error, fragment) -> None:
    prob = _stack()
    out, pullback = bptt.vjp(prob.params, prob.inputs, h0=prob.kwargs["h0"])
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        call(pullback, out)


def test_pullback_refuses_another_library_and_ids_inputs() -> None:
    import torch

    prob = _stack(ids=True)
    out, pullback = bptt.vjp(prob.params, prob.inputs)
    with pytest.raises(TypeError, match="dlogits is a torch array but params"):
        pullback(torch.zeros(out.logits.shape, dtype=torch.float64))
    with pytest.raises(ValueError, match="with_inputs: the inputs are token ids"):
        pullback(np.zeros(out.logits.shape), with_inputs=True)
    _, quiet = bptt.vjp(prob.params, prob.inputs, check_values=False)
    assert np.isnan(quiet(np.full(out.logits.shape, np.nan)).params["V"]).all()


def _without(params, key):
    return {k: v for k, v in params.items() if k != key}


@pytest.mark.parametrize(
    ("change", "error", "fragment"),
    [
        (lambda p: {**p, "U_l5": p["U"]}, ValueError, "unknown key(s) ['U_l5']"),
        (lambda p: _without(p, "U_l1_reverse"), ValueError, "missing key(s) ['U_l1_reverse']"),
        (lambda p: _without(p, "b_l1"), ValueError, "give every cell's bias"),
        (lambda p: {**p, "U_l1": p["U_l1"][:, :5]}, ValueError, "params['U_l1']: expected shape"),
        (
            lambda p: {**p, "V": p["V"][:, :5]},
            ValueError,
            "params['V']: expected shape (3, 10) for cell tanh, 2 layer(s), 2 direction(s)",
        ),
        (lambda p: {**p, "W_l1": p["W_l1"].astype(np.float32)}, TypeError, "W_l1"),
    ],
    ids=["unknown", "missing", "bias", "U-shape", "V-shape", "dtype"],
)
def test_a_stack_is_checked(change, error, fragment) -> None:
    prob = _stack()
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):  # fmt: skip
        bptt.loss_and_grad(change(prob.params), prob.inputs, prob.targets, **prob.kwargs)


def test_call_arguments_of_a_stack_are_checked() -> None:
    prob = _stack()
    run = lambda **kw: bptt.loss_and_grad(prob.params, prob.inputs, prob.targets,  # noqa: E731
                                          **{**prob.kwargs, **kw})  # fmt: skip
    with pytest.raises(ValueError, match=r"h0: expected shape \(L K, B, D\) = \(4, 3, 5\)"):
        run(h0=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="layer_masks: expected L - 1 = 1 arrays"):
        run(layer_masks=[np.ones((4, 3, 10))] * 2)
    with pytest.raises(ValueError, match=r"layer_masks\[0\]: expected shape \(T, B, K D\)"):
        run(layer_masks=[np.ones((4, 3, 5))])
    with pytest.raises(TypeError, match="layer_masks: expected a sequence"):
        run(layer_masks=np.ones((4, 3, 10)))
    with pytest.raises(ValueError, match=r"dropout_mask: expected shape \(T, B, K D\)"):
        run(dropout_mask=np.ones((4, 3, 5)))
    with pytest.raises(ValueError, match="nonlinearity: expected one of"):
        run(nonlinearity="sigmoid")
    single = make_problem(NUMPY_BACKEND, np.random.default_rng(0), head="mse")
    with pytest.raises(TypeError, match="mse targets need a floating dtype"):
        bptt.loss_and_grad(single.params, single.inputs, np.zeros((5, 3, 3), np.int64),
                           head="mse")  # fmt: skip
    with pytest.raises(ValueError, match="targets: contains NaN"):
        bptt.loss_and_grad(single.params, single.inputs, np.full((5, 3, 3), np.nan), head="mse")


def test_mse_head_is_torchs_mse_loss() -> None:
    import torch

    g = np.random.default_rng(0).standard_normal((4, 3, 2))
    y = np.random.default_rng(1).standard_normal((4, 3, 2))
    terms, dg = HEADS["mse"](g, y, np)
    gt = torch.tensor(g, requires_grad=True)
    loss = torch.nn.MSELoss()(gt, torch.tensor(y))
    loss.backward()
    weights = loss_weights(None, (4, 3, 2), head="mse", reduction="mean", dtype=np.float64, xp=np)
    mine, dg = reduce(terms, dg, weights, np)
    assert abs(float(mine) - loss.item()) < 1e-15
    np.testing.assert_allclose(dg, gt.grad.numpy(), rtol=1e-14)


def test_vjp_runs_on_the_gpu_stand_in() -> None:
    """device1 refuses NumPy conversion and device mixing: the pullback stays on it."""
    be = backends.get_backend("array_api_strict", "device1")
    prob = make_problem(be, np.random.default_rng(0), layers=2, bidirectional=True, ids=False,
                        h0=True)  # fmt: skip
    out, pullback = bptt.vjp(prob.params, prob.inputs, h0=prob.kwargs["h0"], nonlinearity="relu")
    dl = be.xp.ones(out.logits.shape, dtype=be.xp.float64, device=be.device)
    ds = be.xp.ones(out.states.shape, dtype=be.xp.float64, device=be.device)
    cot = pullback(dl, dstates=ds, with_inputs=True, with_h0=True)
    assert all(g.device == be.device for g in cot.params.values())
    assert cot.inputs.device == be.device and cot.h0.device == be.device
    other = backends.get_backend("array_api_strict", "device2")
    with pytest.raises(ValueError, match="dlogits is on device"):
        pullback(other.xp.ones(out.logits.shape, dtype=other.xp.float64, device=other.device))
