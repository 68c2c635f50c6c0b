"""GRU and LSTM models (bptt.RNN(cell="gru"|"lstm")) against torch.nn.GRU / torch.nn.LSTM +
Linear + cross-entropy under autograd, float64, to 1e-12: 1-3 layers, 1-2 directions, with
and without bias, token ids and dense inputs, a loss mask, h0 (the pair (h0, c0) for LSTM):
the loss, every parameter gradient, d_inputs, d_h0 (d_c0) through the pullback, and the
last state. Also: every backend runs them, jax.jit of the step equals eager, and the
modules move between the two libraries both ways.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import rel_err

import bptt
from bptt.api import interop

CASES = [  # cell, layers, bidirectional, bias, dense
    ("gru", 1, False, True, False),
    ("gru", 2, True, False, True),
    ("gru", 3, False, True, True),
    ("lstm", 1, False, True, True),
    ("lstm", 2, True, True, False),
    ("lstm", 3, True, False, True),
]
M, D, C, T, B = 5, 4, 3, 6, 3


def _problem(model: bptt.RNN, dense: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = model.init(seed=seed, dtype="float64")
    params = {k: v + rng.uniform(-0.2, 0.2, v.shape) for k, v in params.items()}  # biases != 0
    x = rng.standard_normal((T, B, M)) if dense else rng.integers(0, M, (T, B))
    shape = model.state_shape(B)
    h0 = rng.uniform(-0.5, 0.5, shape)
    if model.state_parts == 2:
        h0 = (h0, rng.uniform(-0.5, 0.5, shape))
    mask = rng.random((T, B)) < 0.8
    mask[0, 0] = True
    return dict(params=params, x=x, y=rng.integers(0, C, (T, B)), h0=h0, mask=mask)


def _torch_side(model, problem, dense):
    rnn, linear = interop.torch_modules(model, problem["params"])
    x = torch.tensor(problem["x"])
    x = x.requires_grad_() if dense else torch.nn.functional.one_hot(x, M).double()
    parts = problem["h0"] if isinstance(problem["h0"], tuple) else (problem["h0"],)
    h0 = [torch.tensor(p if p.ndim == 3 else p[None]).requires_grad_() for p in parts]
    out, last = rnn(x, tuple(h0) if len(h0) == 2 else h0[0])
    logits = linear(out)
    logits.retain_grad()
    mask = torch.tensor(problem["mask"], dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, C), torch.tensor(problem["y"]).reshape(-1), reduction="none"
    )
    loss = (ce * mask.reshape(-1)).sum() / mask.sum()
    loss.backward()
    return rnn, linear, x, h0, last, logits, loss


def _torch_grads(model, rnn, linear) -> dict:
    grads = {"V": linear.weight.grad}
    if linear.bias is not None:
        grads["c"] = linear.bias.grad
    D_ = model.hidden_size
    for layer, direction in model.arch.cells():
        s = bptt.math.layers.suffix(layer, direction)
        t = f"_l{layer}" + ("_reverse" if direction else "")
        grads[f"U{s}"] = getattr(rnn, f"weight_ih{t}").grad
        grads[f"W{s}"] = getattr(rnn, f"weight_hh{t}").grad
        if model.bias:  # b = bias_ih (+ bias_hh where only the sum enters): dL/db = dL/dbias_ih
            grads[f"b{s}"] = getattr(rnn, f"bias_ih{t}").grad
            if model.cell == "gru":
                grads[f"b_hn{s}"] = getattr(rnn, f"bias_hh{t}").grad[2 * D_ :]
    return {k: v.numpy() for k, v in grads.items()}


@pytest.mark.parametrize(("cell", "layers", "bidirectional", "bias", "dense"), CASES)
def test_a_gated_model_equals_torch(cell, layers, bidirectional, bias, dense) -> None:
    model = bptt.RNN(M, D, C, cell=cell, layers=layers, bidirectional=bidirectional, bias=bias)
    problem = _problem(model, dense)
    p, x, y, h0, mask = (problem[k] for k in ("params", "x", "y", "h0", "mask"))
    loss, grads, h_last = model.loss_and_grad(p, x, y, h0=h0, mask=mask)
    rnn, linear, tx, th0, last, logits, ref = _torch_side(model, problem, dense)
    assert abs(float(loss) - ref.item()) <= 1e-12 * abs(ref.item())
    want = _torch_grads(model, rnn, linear)
    assert set(want) == set(grads)
    for key, g in want.items():
        assert rel_err(grads[key], g) < 1e-12, key
    last = last if isinstance(last, tuple) else (last,)
    mine = h_last if isinstance(h_last, tuple) else (h_last,)
    for a, b in zip(mine, last, strict=True):
        assert rel_err(a, b.detach().numpy().reshape(a.shape)) < 1e-12
    # the pullback of the same logits' cotangent: every gradient, d_inputs and d_h0 (d_c0)
    _, pullback = model.vjp(p, x, h0=h0)
    cot = pullback(logits.grad.numpy(), with_inputs=dense, with_h0=True)
    for key, g in want.items():
        assert rel_err(cot.params[key], g) < 1e-12, key
    if dense:
        assert rel_err(cot.inputs, tx.grad.numpy()) < 1e-12
    d_h0 = cot.h0 if isinstance(cot.h0, tuple) else (cot.h0,)
    for a, b in zip(d_h0, th0, strict=True):
        assert rel_err(a, b.grad.numpy().reshape(a.shape)) < 1e-12


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_torch_modules_round_trip(cell) -> None:
    torch.manual_seed(0)
    module = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](
        M, D, num_layers=2, bidirectional=True
    )
    linear = torch.nn.Linear(2 * D, C)
    model, params = interop.from_torch(module, linear, dtype="float64")
    assert (model.cell, model.layers, model.bidirectional) == (cell, 2, True)
    rnn, lin = interop.torch_modules(model, params)
    x = np.random.default_rng(1).standard_normal((T, B, M))
    want = linear(module(torch.tensor(x, dtype=torch.float32))[0]).detach().numpy()
    _, logits = model.forward(params, x)
    assert rel_err(logits, want) < 1e-5  # torch's float32 module against float64 here
    got = lin(rnn(torch.tensor(x))[0]).detach().numpy()
    assert rel_err(logits, got) < 1e-12


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_models_run_on_every_backend(be, cell) -> None:
    model = bptt.RNN(M, D, C, cell=cell, layers=2)
    dtype = "float64" if be.supports("float64") else "float32"
    problem = _problem(model, dense=False)
    problem["h0"] = problem["h0"] if cell == "lstm" else (problem["h0"],)
    ref_h0 = problem["h0"] if cell == "lstm" else problem["h0"][0]
    ref = model.loss_and_grad(problem["params"], problem["x"], problem["y"], h0=ref_h0)
    on = {k: be.asarray(v.astype(dtype), dtype=dtype) for k, v in problem["params"].items()}
    h0 = tuple(be.asarray(h.astype(dtype), dtype=dtype) for h in problem["h0"])  # (h0, c0)
    h0 = h0 if cell == "lstm" else h0[0]
    loss, grads, _ = model.loss_and_grad(on, be.asarray(problem["x"]), be.asarray(problem["y"]),
                                         h0=h0)  # fmt: skip
    tol = 1e-12 if dtype == "float64" else 1e-4
    assert abs(float(be.to_numpy(loss)) - float(ref[0])) <= tol * abs(float(ref[0]))
    for key in grads:
        assert rel_err(be.to_numpy(grads[key]), ref[1][key]) < 100 * tol, key


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_jitted_gated_step_equals_eager(cell) -> None:
    """Under jax.jit the gated recurrences run as lax.scan (the schedule's default):
    the same loss and gradients as eager NumPy, and a program that does not grow with T."""
    jax = pytest.importorskip("jax")
    from conftest import Backend, jax_x64, load

    model = bptt.RNN(M, D, C, cell=cell, layers=2, bidirectional=True)
    problem = _problem(model, dense=True)
    p, x, y, h0 = (problem[k] for k in ("params", "x", "y", "h0"))
    want = model.loss_and_grad(p, x, y, h0=h0)
    with jax_x64(True):
        jx = load(Backend.JAX)
        on = lambda a: jx.asarray(a, dtype="float64")  # noqa: E731
        h = tuple(map(on, h0)) if cell == "lstm" else on(h0)
        args = ({k: on(v) for k, v in p.items()}, on(x), jx.asarray(y), h)

        def step(params, inputs, targets, h):
            return model.loss_and_grad(params, inputs, targets, h0=h, check_values=False)

        loss, grads, _ = jax.jit(step)(*args)
        assert abs(float(loss) - float(want[0])) <= 1e-12 * abs(float(want[0]))
        for key in grads:
            assert rel_err(np.asarray(grads[key]), want[1][key]) < 1e-12, key
        sizes = []
        for steps in (4, 40):
            xs = jx.asarray(np.zeros((steps, B, M)), dtype="float64")
            ys = jx.asarray(np.zeros((steps, B), dtype=np.int64))
            sizes.append(len(jax.make_jaxpr(step)(args[0], xs, ys, args[3]).eqns))
        assert sizes[0] == sizes[1]  # one loop body whatever T: the scan, not an unrolled loop


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_numpy_runs_the_gated_fast_path_with_the_same_bits(cell, monkeypatch) -> None:
    """On NumPy the step takes the gated cells' own loops (bptt.execution.numpy_exec.gated, written
    in place) from its executor, and gives the bits of the generic step bodies."""
    from bptt.execution.numpy_exec import gated
    from bptt.math import model as vanilla
    from bptt.math import step
    from bptt.math.heads import loss_weights

    net = bptt.RNN(M, D, C, cell=cell, layers=2, bidirectional=True)
    problem = _problem(net, dense=False)
    p, x, y, h0 = (problem[k] for k in ("params", "x", "y", "h0"))
    calls = []
    fast = getattr(gated, f"{cell}_recurrence")
    monkeypatch.setattr(bptt.execution.numpy_exec.recurrences, f"{cell}_recurrence",
                        lambda *a, **k: calls.append(1) or fast(*a, **k))  # fmt: skip
    loss, grads, _ = net.loss_and_grad(p, x, y, h0=h0, schedule="single")
    assert len(calls) == 4  # every cell of the stack
    weights = loss_weights(None, (T, B, C), head="softmax", reduction="mean",
                           dtype=np.float64, xp=np)  # fmt: skip
    want = step.loss_and_grad(
        p,
        x,
        y,
        h0=h0,
        head="softmax",
        weights=weights,
        dropout_mask=None,
        xp=np,
        recurrences=vanilla,
        cell=cell,
    )
    assert float(loss) == float(want[0])
    for key in grads:
        np.testing.assert_array_equal(grads[key], want[1][key], err_msg=key)
