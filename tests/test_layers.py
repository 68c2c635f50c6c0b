"""Stacked and bidirectional layers, relu, the mse head and bptt.vjp, against torch.nn.RNN.

The whole matrix (layers 1-3, one or two directions, tanh or relu, each head, with
and without biases, token ids or dense inputs, a loss mask and h0) on NumPy float64
against ``torch.nn.RNN(num_layers, nonlinearity, bidirectional)`` + ``Linear`` + the
matching loss under autograd, to 1e-12: the loss, every parameter gradient, the last
states, and through :func:`bptt.vjp` the gradients of the dense inputs and of h0
for torch's own dL/dlogits. Then finite differences on every entry of small cases,
random shapes, and a subset on every backend of the suite.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import NUMPY_BACKEND, assert_close, make_problem, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_reference import torch_stack_reference

import bptt
from bptt.math.layers import Arch, arch_of, param_names

TOL = 1e-12
FLAGS = list(itertools.product([True, False], repeat=4))  # bias, ids, mask, h0


def _check_against_torch(prob, *, layers: int, bidirectional: bool, nonlinearity: str,
                         tol: float = TOL) -> None:  # fmt: skip
    """loss_and_grad and the vjp pullback of ``prob`` against torch autograd."""
    ref = torch_stack_reference(prob.host, layers=layers, bidirectional=bidirectional,
                                nonlinearity=nonlinearity)  # fmt: skip
    loss, grads, h_last = bptt.loss_and_grad(
        prob.params, prob.inputs, prob.targets, nonlinearity=nonlinearity, **prob.kwargs
    )
    assert abs(float(loss) - ref["loss"]) <= tol * max(abs(ref["loss"]), 1e-300)
    assert list(grads) == list(prob.params)
    for key in grads:
        assert grads[key].shape == prob.params[key].shape, key
        assert rel_err(grads[key], ref["grads"][key]) < tol, key
    assert rel_err(h_last, ref["h_last"]) < tol
    dense = prob.inputs.ndim == 3
    outputs, pullback = bptt.vjp(prob.params, prob.inputs, h0=prob.kwargs.get("h0"),
                                 nonlinearity=nonlinearity)  # fmt: skip
    assert rel_err(outputs.logits, ref["logits"]) < tol
    assert rel_err(outputs.states, ref["states"]) < tol
    cot = pullback(ref["dlogits"], with_inputs=dense, with_h0=True)
    for key in grads:
        assert rel_err(cot.params[key], ref["grads"][key]) < tol, key
    assert rel_err(cot.h0, ref["d_h0"]) < tol and cot.h0.shape == ref["d_h0"].shape
    if dense:
        assert rel_err(cot.inputs, ref["d_inputs"]) < tol
    else:
        assert cot.inputs is None


@pytest.mark.parametrize("head", ["softmax", "sigmoid", "mse"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_every_combination_matches_torch(layers, bidirectional, nonlinearity, head) -> None:
    """Each of the 16 flag combinations (bias, ids, mask, h0), reductions alternating."""
    for i, (bias, ids, mask, h0) in enumerate(FLAGS):
        rng = np.random.default_rng([layers, bidirectional, len(nonlinearity), len(head), i])
        prob = make_problem(
            NUMPY_BACKEND, rng, T=5, B=3, M=4, D=5, C=3, head=head, ids=ids, bias=bias,
            mask=mask, h0=h0, reduction=("mean", "sum")[i % 2], layers=layers,
            bidirectional=bidirectional,
        )  # fmt: skip
        _check_against_torch(prob, layers=layers, bidirectional=bidirectional,
                             nonlinearity=nonlinearity)  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(
    T=st.integers(1, 6),
    B=st.integers(1, 4),
    M=st.integers(1, 5),
    D=st.integers(1, 5),
    C=st.integers(1, 4),
    layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    nonlinearity=st.sampled_from(["tanh", "relu"]),
    head=st.sampled_from(["softmax", "sigmoid", "mse"]),
    flags=st.sampled_from(FLAGS),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_torch(T, B, M, D, C, layers, bidirectional, nonlinearity, head,
                                   flags, seed) -> None:  # fmt: skip
    bias, ids, mask, h0 = flags
    prob = make_problem(
        NUMPY_BACKEND, np.random.default_rng(seed), T=T, B=B, M=M, D=D, C=C, head=head,
        ids=ids, bias=bias, mask=mask, h0=h0, layers=layers, bidirectional=bidirectional,
        seed=seed,
    )  # fmt: skip
    _check_against_torch(prob, layers=layers, bidirectional=bidirectional,
                         nonlinearity=nonlinearity, tol=1e-11)  # fmt: skip


def test_default_model_keeps_its_names_and_order() -> None:
    params = bptt.init_params(4, 5, 3)
    assert list(params) == ["U", "W", "V", "b", "c"] == list(param_names(Arch()))
    stack = bptt.init_params(4, 5, 3, num_layers=2, bidirectional=True)
    assert list(stack) == [
        "U", "W", "U_l0_reverse", "W_l0_reverse", "U_l1", "W_l1", "U_l1_reverse",
        "W_l1_reverse", "V", "b", "b_l0_reverse", "b_l1", "b_l1_reverse", "c",
    ]  # fmt: skip
    assert stack["U_l1"].shape == (5, 10) and stack["V"].shape == (3, 10)
    assert arch_of(stack) == Arch(2, 2) and arch_of(params) == Arch(1, 1)
    # the first layer's draws are those of the one-layer model: the same seed, same U, W
    np.testing.assert_array_equal(stack["U"], params["U"])
    np.testing.assert_array_equal(stack["W"], params["W"])


def _fd(fn, x: np.ndarray, eps: float) -> np.ndarray:
    """Five-point central differences of the scalar fn at every entry of x."""
    out = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        f = {}
        for k in (-2, -1, 1, 2):
            moved = x.copy()
            moved[i] += k * eps
            f[k] = fn(moved)
        out[i] = (8 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12 * eps)
    return out


CASES = [
    dict(layers=2, bidirectional=True, nonlinearity="tanh", head="softmax"),
    dict(layers=2, bidirectional=True, nonlinearity="relu", head="mse"),
    dict(layers=3, bidirectional=False, nonlinearity="relu", head="sigmoid"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_finite_differences_every_entry(case) -> None:
    """Every parameter entry (bptt.gradcheck), and every entry of the dense inputs and
    of h0 through the pullback, against five-point differences in float64, with the
    dropout between layers in play. relu takes a smaller step (its kink at 0) and a
    looser bound (the differences of its tiny lower-layer gradients are rounding)."""
    arch = {k: case[k] for k in ("layers", "bidirectional")}
    nl = case["nonlinearity"]
    eps, tol = (1e-4, 1e-7) if nl == "relu" else (1e-3, 1e-8)
    rng = np.random.default_rng(11)
    prob = make_problem(NUMPY_BACKEND, rng, T=3, B=2, M=3, D=3, C=2, head=case["head"],
                        ids=False, mask=True, h0=True, **arch)  # fmt: skip
    width = 3 * (2 if case["bidirectional"] else 1)
    masks = [(rng.random((3, 2, width)) < 0.7) / 0.7 for _ in range(case["layers"] - 1)]
    kw = {**prob.kwargs, "nonlinearity": nl, "layer_masks": masks}
    assert bptt.gradcheck(prob.params, prob.inputs, prob.targets, eps=eps, **kw) < tol

    def loss_at(**change):
        given = {"inputs": prob.inputs, "h0": kw["h0"], **change}
        rest = {k: v for k, v in kw.items() if k != "h0"}
        return float(bptt.loss_and_grad(prob.params, given["inputs"], prob.targets,
                                        h0=given["h0"], **rest)[0])  # fmt: skip

    _, grads, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **kw)
    weights = bptt.math.heads.loss_weights(kw["mask"], (3, 2, 2), head=case["head"],
                                      reduction="mean", dtype=np.float64, xp=np)  # fmt: skip
    outputs, pullback = bptt.vjp(prob.params, prob.inputs, h0=kw["h0"], nonlinearity=nl,
                                 layer_masks=masks)  # fmt: skip
    _, dlogits = bptt.math.heads.HEADS[case["head"]](outputs.logits, prob.targets, np)
    dlogits = dlogits * (weights[..., None] if not isinstance(weights, float) else weights)
    cot = pullback(dlogits, with_inputs=True, with_h0=True)
    for key in grads:
        np.testing.assert_allclose(cot.params[key], grads[key], rtol=1e-13, atol=1e-16)
    fd_x = _fd(lambda x: loss_at(inputs=x), prob.inputs, eps)
    fd_h = _fd(lambda h: loss_at(h0=h), kw["h0"], eps)
    assert rel_err(cot.inputs, fd_x) < tol and rel_err(cot.h0, fd_h) < tol


def test_dropout_between_layers_matches_a_hand_built_torch_stack() -> None:
    """layer_masks against single-layer torch RNNs chained by hand with the masks
    between them (torch.nn.RNN's own dropout draws its own masks): loss and every
    gradient to 1e-12."""
    import torch

    from bptt.math.layers import suffix

    rng = np.random.default_rng(3)
    T, B, M, D, C = 6, 3, 4, 5, 3
    prob = make_problem(NUMPY_BACKEND, rng, T=T, B=B, M=M, D=D, C=C, ids=False, layers=3,
                        bidirectional=True, h0=True)  # fmt: skip
    masks = [(rng.random((T, B, 2 * D)) < 0.6) / 0.6 for _ in range(2)]
    out_mask = (rng.random((T, B, 2 * D)) < 0.6) / 0.6
    loss, grads, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets,
                                        layer_masks=masks, dropout_mask=out_mask,
                                        **prob.kwargs)  # fmt: skip
    x, h0 = torch.tensor(prob.inputs), torch.tensor(prob.kwargs["h0"])
    theirs = {}  # our name -> torch parameter
    for layer in range(3):
        one = torch.nn.RNN(x.shape[-1], D, bidirectional=True, dtype=torch.float64)
        with torch.no_grad():
            for d, t in ((0, "_l0"), (1, "_l0_reverse")):
                s = suffix(layer, d)
                for ours, name in (("U", "weight_ih"), ("W", "weight_hh"), ("b", "bias_hh")):
                    theirs[ours + s] = getattr(one, name + t)
                    theirs[ours + s].copy_(torch.tensor(prob.params[ours + s]))
                getattr(one, "bias_ih" + t).zero_()
        x, _ = one(x, h0[2 * layer : 2 * layer + 2])
        x = x * torch.tensor(masks[layer] if layer < 2 else out_mask)
    lin = torch.nn.Linear(2 * D, C, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(prob.params["V"]))
        lin.bias.copy_(torch.tensor(prob.params["c"]))
    theirs.update(V=lin.weight, c=lin.bias)
    ref = torch.nn.functional.cross_entropy(lin(x).reshape(T * B, C),
                                            torch.tensor(prob.targets).reshape(-1))  # fmt: skip
    ref.backward()
    assert abs(float(loss) - ref.item()) < 1e-13
    assert sorted(theirs) == sorted(grads)
    for key, tensor in theirs.items():
        assert rel_err(grads[key], tensor.grad.numpy()) < TOL, key


def test_a_user_loss_and_a_user_head_plug_in() -> None:
    """A loss on the last step only through dlogits, and a head of one's own on the
    states through dstates, give the gradients of that loss (finite differences)."""
    rng = np.random.default_rng(5)
    prob = make_problem(NUMPY_BACKEND, rng, T=4, B=2, M=3, D=3, C=2, ids=False, layers=2,
                        bidirectional=True, head="mse")  # fmt: skip
    w = rng.standard_normal((6,))  # a user head: sum over t, b of tanh(w . s_t)

    def user_loss(params):
        out, _ = bptt.vjp(params, prob.inputs)
        g = out.logits[-1]  # the last step only: (B, C)
        return float(np.sum(g**2) + np.sum(np.tanh(out.states @ w)))

    out, pullback = bptt.vjp(prob.params, prob.inputs)
    dlogits = np.zeros_like(out.logits)
    dlogits[-1] = 2 * out.logits[-1]
    dstates = (1 - np.tanh(out.states @ w) ** 2)[..., None] * w  # (T, B, 2D)
    cot = pullback(dlogits, dstates)
    only_states = pullback(dstates=dstates)
    assert not np.any(only_states.params["V"]) and not np.any(only_states.params["c"])
    for key in ("W_l1_reverse", "U", "V"):
        flat = prob.params[key]
        numeric = _fd(lambda v, key=key: user_loss({**prob.params, key: v}), flat, 1e-4)
        assert rel_err(cot.params[key], numeric) < 1e-8, key


@pytest.mark.parametrize("schedule", ["single", "split"])
def test_a_stack_runs_the_single_and_split_schedules(schedule) -> None:
    prob = make_problem(NUMPY_BACKEND, np.random.default_rng(2), T=8, B=6, M=5, D=7, C=4,
                        layers=2, bidirectional=True, h0=True)  # fmt: skip
    masks = [np.ones((8, 6, 14))]
    base = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, schedule="single",
                              layer_masks=masks, **prob.kwargs)  # fmt: skip
    got = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, schedule=schedule,
                             layer_masks=masks, **prob.kwargs)  # fmt: skip
    np.testing.assert_allclose(float(got[0]), float(base[0]), rtol=1e-14)
    for key in base[1]:
        np.testing.assert_allclose(got[1][key], base[1][key], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(got[2], base[2])
    assert got[2].shape == (4, 6, 7)


def test_overlap_is_refused_for_a_stack_and_auto_avoids_it(monkeypatch) -> None:
    prob = make_problem(NUMPY_BACKEND, np.random.default_rng(2), T=8, B=4, layers=2)
    with pytest.raises(ValueError, match=r"'overlap' .* one vanilla .* layer of one direction"):
        bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, schedule="overlap")
    gru = bptt.RNN(3, 4, 3, cell="gru")  # one layer, but gated: no overlap either
    ids = np.zeros((5, 2), dtype=np.int64)
    with pytest.raises(ValueError, match=r"this model is a stack or a gated cell"):
        gru.loss_and_grad(gru.init(dtype="float64"), ids, ids, schedule="overlap")
    from bptt.execution import schedules
    from bptt.execution.numpy_exec import policy

    monkeypatch.setenv("BPTT_THREADS", "2")
    usable = policy.threads_usable()
    # S2: a single vanilla layer overlaps; a stack splits the batch instead
    assert schedules.resolve("auto", np, 100, 64, 256, 4)[0] == ("overlap" if usable else "single")
    name, _ = schedules.resolve("auto", np, 100, 64, 256, 4, single=False)
    assert name == ("split" if usable else "single")


def test_same_numbers_on_every_backend(be) -> None:
    """A two-layer bidirectional relu stack (dense inputs, mse, a mask, h0): loss_and_grad
    and the pullback on each backend (float32 where float64 is missing) equal NumPy
    float64's; the results stay on that library and device."""
    arch = dict(layers=2, bidirectional=True, nonlinearity="relu", head="mse", ids=False)
    dtype = "float64" if be.supports("float64") else "float32"
    tol = 1e-10 if dtype == "float64" else 2e-4
    nl = arch["nonlinearity"]
    shape = {k: arch[k] for k in ("layers", "bidirectional", "head", "ids")}
    kwargs = dict(T=3, B=2, M=3, D=4, C=2, mask=True, h0=True, **shape)
    ref = make_problem(NUMPY_BACKEND, np.random.default_rng(9), **kwargs)
    prob = make_problem(be, np.random.default_rng(9), dtype=dtype, **kwargs)
    loss, grads, h_last = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets,
                                             nonlinearity=nl, **prob.kwargs)  # fmt: skip
    rloss, rgrads, rh = bptt.loss_and_grad(ref.params, ref.inputs, ref.targets,
                                           nonlinearity=nl, **ref.kwargs)  # fmt: skip
    assert abs(float(be.to_numpy(loss)) - float(rloss)) <= tol * abs(float(rloss))
    for key in rgrads:
        assert_close(grads[key], rgrads[key], be, rtol=tol, atol=tol * np.abs(rgrads[key]).max())
    assert_close(h_last, rh, be, rtol=tol, atol=tol)
    out, pullback = bptt.vjp(prob.params, prob.inputs, h0=prob.kwargs["h0"], nonlinearity=nl)
    rout, rpull = bptt.vjp(ref.params, ref.inputs, h0=ref.kwargs["h0"], nonlinearity=nl)
    dl = np.random.default_rng(1).standard_normal(rout.logits.shape)
    cot = pullback(be.asarray(dl.astype(dtype), dtype=dtype), with_inputs=not arch["ids"],
                   with_h0=True)  # fmt: skip
    rcot = rpull(dl, with_inputs=not arch["ids"], with_h0=True)
    assert_close(out.logits, rout.logits, be, rtol=tol, atol=tol)
    assert_close(cot.h0, rcot.h0, be, rtol=tol, atol=tol * np.abs(rcot.h0).max())
    if not arch["ids"]:
        assert_close(cot.inputs, rcot.inputs, be, rtol=tol, atol=tol * np.abs(rcot.inputs).max())


def test_finite_differences_on_every_backend(be64) -> None:
    """A random entry of every parameter of a bidirectional relu stack, on each float64
    backend (every entry: test_finite_differences_every_entry, on NumPy); the shapes of
    test_same_numbers_on_every_backend, so that JAX compiles its operations once."""
    prob = make_problem(be64, np.random.default_rng(4), T=3, B=2, M=3, D=4, C=2, ids=False,
                        head="mse", layers=2, bidirectional=True, mask=True, h0=True)  # fmt: skip
    err = bptt.gradcheck(prob.params, prob.inputs, prob.targets, eps=1e-4, max_entries=1,
                         nonlinearity="relu", **prob.kwargs)  # fmt: skip
    assert err < 1e-7


def test_relu_is_the_default_path_with_another_f() -> None:
    """relu's forward is max(z, 0) and its derivative the indicator of s > 0, in the
    pure and in NumPy's recurrences alike (the same bits)."""
    from bptt.execution.numpy_exec import recurrences
    from bptt.math import model

    rng = np.random.default_rng(0)
    W, xu, s0 = rng.standard_normal((4, 4)), rng.standard_normal((6, 3, 4)), None
    pure = model.recurrence(W, xu, s0, np, "relu")
    np.testing.assert_array_equal(recurrences.recurrence(W, xu, s0, np, "relu"), pure)
    assert np.all(pure >= 0) and np.any(pure == 0)
    dS = rng.standard_normal((6, 3, 4))
    np.testing.assert_array_equal(
        recurrences.reverse_recurrence(W, pure, dS, None, np, "relu"),
        model.reverse_recurrence(W, pure, dS, None, np, "relu"),
    )
    np.testing.assert_array_equal(model.derivative(pure, "relu", np), pure > 0)
