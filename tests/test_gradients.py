"""Gradients: finite differences, torch autograd, the seed's scalar form, random shapes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import make_problem, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_reference import assert_matches_torch, torch_loss_and_grad

import bptt
from bptt import backends

NUMPY = backends.get_backend("numpy")

CONFIGS = [
    dict(head=head, ids=ids, bias=bias, mask=mask, h0=h0, reduction=red)
    for head, ids, bias, mask, h0, red in itertools.product(
        ["softmax", "sigmoid"],
        [True, False],
        [True, False],
        [False, True],
        [False, True],
        ["mean", "sum"],
    )
]


def _id(cfg: dict) -> str:
    flags = [k for k in ("bias", "mask", "h0") if cfg[k]]
    return "-".join([cfg["head"], "ids" if cfg["ids"] else "dense", cfg["reduction"], *flags])


@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_matches_torch_autograd(cfg: dict) -> None:
    """Every combination of head, input kind, bias, mask, h0 and reduction, float64."""
    rng = np.random.default_rng(abs(hash(_id(cfg))) % 2**32)
    prob = make_problem(NUMPY, rng, T=7, B=4, M=5, D=6, C=3, **cfg)
    grads = assert_matches_torch(prob)
    assert list(grads) == list(prob.params)


@pytest.mark.parametrize("cfg", CONFIGS[::5], ids=_id)
def test_finite_differences_every_entry(be64, cfg: dict) -> None:
    """float64 five-point differences on every parameter entry, on every backend."""
    prob = make_problem(be64, np.random.default_rng(7), T=4, B=2, M=3, D=4, C=2, **cfg)
    err = bptt.gradcheck(prob.params, prob.inputs, prob.targets, **prob.kwargs)
    assert err < 1e-9


def test_gradcheck_catches_a_wrong_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """gradcheck is not a check that cannot fail: a 0.1% error in dW shows."""
    from bptt.math import model

    prob = make_problem(NUMPY, np.random.default_rng(3), T=6, B=2)
    assert bptt.gradcheck(prob.params, prob.inputs, prob.targets) < 1e-9
    real_weight_grads = model.weight_grads

    def off_by_a_little(*args):
        grads = real_weight_grads(*args)
        grads["W"] = grads["W"] * 1.001
        return grads

    monkeypatch.setattr(model, "weight_grads", off_by_a_little)
    assert bptt.gradcheck(prob.params, prob.inputs, prob.targets) > 1e-4


def test_torch_nn_rnn() -> None:
    """Against torch.nn.RNN + Linear + CrossEntropyLoss, the layers users compare with."""
    rng = np.random.default_rng(5)
    T, B, M, D, C = 9, 4, 6, 5, 6
    prob = make_problem(NUMPY, rng, T=T, B=B, M=M, D=D, C=C, ids=True, bias=True)
    rnn = torch.nn.RNN(M, D, nonlinearity="tanh", dtype=torch.float64)
    lin = torch.nn.Linear(D, C, dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.tensor(prob.host["U"]))
        rnn.weight_hh_l0.copy_(torch.tensor(prob.host["W"]))
        rnn.bias_ih_l0.copy_(torch.tensor(prob.host["b"]))
        rnn.bias_hh_l0.zero_()
        lin.weight.copy_(torch.tensor(prob.host["V"]))
        lin.bias.copy_(torch.tensor(prob.host["c"]))
    x = torch.nn.functional.one_hot(torch.tensor(prob.host["inputs"]), M).to(torch.float64)
    out, h_n = rnn(x)
    loss_t = torch.nn.CrossEntropyLoss()(
        lin(out).reshape(T * B, C), torch.tensor(prob.host["targets"]).reshape(-1)
    )
    loss_t.backward()
    loss, grads, h_last = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)
    assert abs(float(loss) - loss_t.item()) < 1e-13
    pairs = {
        "U": rnn.weight_ih_l0,
        "W": rnn.weight_hh_l0,
        "b": rnn.bias_hh_l0,
        "V": lin.weight,
        "c": lin.bias,
    }
    for key, tensor in pairs.items():
        assert rel_err(grads[key], tensor.grad.numpy()) < 1e-12, key
    np.testing.assert_allclose(h_last, h_n[0].detach().numpy(), rtol=1e-13)


def test_seed_scalar_form() -> None:
    """Section 1 of the seed (M = D = C = 1, sigmoid head, no biases), against a
    hand-written scalar recurrence that keeps the tanh' factor eqs. (13)-(15) drop."""
    u, w, v = 0.7, -1.3, 0.9
    xs = [1.0, -0.5, 2.0, 0.3]
    ys = [1.0, 0.0, 1.0, 1.0]
    s0 = 0.2
    s = [s0]
    for x in xs:  # eq. (1)
        s.append(np.tanh(u * x + w * s[-1]))
    du = dw = dv = 0.0
    carry = 0.0  # dL/ds_t coming from later steps
    for t in range(len(xs), 0, -1):
        yhat = 1 / (1 + np.exp(-v * s[t]))  # eq. (2)
        dg = yhat - ys[t - 1]  # full binary cross-entropy
        dv += dg * s[t]
        ds = dg * v + carry
        dz = ds * (1 - s[t] ** 2)  # the tanh' factor, at every step
        du += dz * xs[t - 1]
        dw += dz * s[t - 1]
        carry = dz * w
    params = {k: np.array([[val]]) for k, val in (("U", u), ("W", w), ("V", v))}
    inputs = np.array(xs).reshape(4, 1, 1)
    targets = np.array(ys).reshape(4, 1)
    _, grads, _ = bptt.loss_and_grad(
        params, inputs, targets, h0=np.array([[s0]]), head="sigmoid", reduction="sum"
    )
    for key, ref in (("U", du), ("W", dw), ("V", dv)):
        assert abs(grads[key][0, 0] - ref) <= 1e-14 * abs(ref), key

    # The seed's eq. (16), W^{t-k} without tanh', gives a different (wrong) dW.
    wrong = 0.0
    for t in range(1, len(xs) + 1):
        yhat = 1 / (1 + np.exp(-v * s[t]))
        dL_ds = (yhat - ys[t - 1]) * v
        wrong += sum(dL_ds * w ** (t - k) * (1 - s[k] ** 2) * s[k - 1] for k in range(1, t + 1))
    assert abs(wrong - dw) > 1e-3


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 6),
    B=st.integers(1, 4),
    M=st.integers(1, 5),
    D=st.integers(1, 5),
    C=st.integers(1, 4),
    head=st.sampled_from(["softmax", "sigmoid"]),
    ids=st.booleans(),
    bias=st.booleans(),
    mask=st.booleans(),
    h0=st.booleans(),
    reduction=st.sampled_from(["mean", "sum"]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_torch(
    T, B, M, D, C, head, ids, bias, mask, h0, reduction, seed
) -> None:
    rng = np.random.default_rng(seed)
    prob = make_problem(
        NUMPY,
        rng,
        T=T,
        B=B,
        M=M,
        D=D,
        C=C,
        head=head,
        ids=ids,
        bias=bias,
        mask=mask,
        h0=h0,
        reduction=reduction,
        seed=seed,
    )
    loss, grads, h_last = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **prob.kwargs)
    ref_loss, ref_grads, ref_h = torch_loss_and_grad(prob.host)
    assert abs(float(loss) - ref_loss) <= 1e-12 * max(abs(ref_loss), 1e-300)
    for key in grads:
        assert grads[key].shape == prob.params[key].shape
        assert rel_err(grads[key], ref_grads[key]) < 1e-11, key
    np.testing.assert_allclose(h_last, ref_h, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_dropout_on_the_output_path(be64, head: str) -> None:
    """Dropout multiplies the states before V only: finite differences agree, and an
    all-ones mask changes nothing."""
    rng = np.random.default_rng(12)
    prob = make_problem(be64, rng, T=4, B=2, M=3, D=4, C=2, head=head, h0=True)
    keep = (rng.random((4, 2, 4)) < 0.6) / 0.6
    kwargs = {**prob.kwargs, "dropout_mask": be64.asarray(keep, dtype="float64")}
    assert bptt.gradcheck(prob.params, prob.inputs, prob.targets, **kwargs) < 1e-9
    ones = {**prob.kwargs, "dropout_mask": be64.asarray(np.ones((4, 2, 4)), dtype="float64")}
    loss, _, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **prob.kwargs)
    loss1, _, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **ones)
    assert be64.to_numpy(loss) == be64.to_numpy(loss1)
    dropped, _, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **kwargs)
    assert be64.to_numpy(dropped) != be64.to_numpy(loss)
