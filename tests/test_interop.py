"""bptt.api.interop: parameters to and from torch.nn.RNN + Linear, the same outputs either way."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import rel_err

import bptt
from bptt import backends, optim
from bptt.api import interop

ARCHS = [(1, False), (2, False), (1, True), (3, True)]


def _trained(model: bptt.RNN) -> dict:
    """A few Adam steps here, so that every parameter (biases too) is no longer its init."""
    rng = np.random.default_rng(model.layers)
    params = model.init(dtype="float64", seed=1)
    opt = optim.adam(3e-2)
    state = opt.init(params)
    x, y = rng.standard_normal((6, 2, 4)), rng.integers(0, 3, (6, 2))
    for _ in range(5):
        _, grads, _ = model.loss_and_grad(params, x, y)
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize(("layers", "bidirectional"), ARCHS)
def test_a_model_trained_here_gives_the_same_outputs_in_torch(layers, bidirectional,
                                                              nonlinearity) -> None:  # fmt: skip
    model = bptt.RNN(4, 5, 3, cell=nonlinearity, layers=layers, bidirectional=bidirectional)
    params = _trained(model)
    rnn, linear = interop.torch_modules(model, params)
    assert (rnn.num_layers, rnn.bidirectional, rnn.nonlinearity) == (layers, bidirectional,
                                                                      nonlinearity)  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 4))
    cells = layers * (2 if bidirectional else 1)
    h0 = rng.uniform(-0.5, 0.5, (cells, 3, 5))
    ours = model.forward(params, x, h0=h0 if cells > 1 else h0[0], return_state=True)
    out, h_n = rnn(torch.tensor(x), torch.tensor(h0))
    assert rel_err(ours[0], out.detach().numpy()) < 1e-14
    assert rel_err(ours[1], linear(out).detach().numpy()) < 1e-14
    assert rel_err(ours[2], h_n.detach().numpy().reshape(ours[2].shape)) < 1e-14
    back_model, back = interop.from_torch(rnn, linear)  # and the round trip is exact
    assert back_model == model  # the cell comes back from the module: nothing told twice
    assert list(back) == list(params)
    for key in params:
        np.testing.assert_array_equal(back[key], params[key], err_msg=key)


@pytest.mark.parametrize(("layers", "bidirectional"), ARCHS)
def test_a_torch_model_loads_here(layers, bidirectional) -> None:
    """torch's own init, both biases nonzero and apart: summed into b, same outputs."""
    torch.manual_seed(layers)
    rnn = torch.nn.RNN(4, 5, num_layers=layers, nonlinearity="relu", bidirectional=bidirectional)
    linear = torch.nn.Linear(5 * (2 if bidirectional else 1), 3)
    model, params = interop.from_torch(
        rnn.state_dict(), linear.state_dict(), dtype="float64", cell="relu"
    )  # a state dict does not hold it
    assert model.cell == "relu" and params["U"].dtype == np.float64
    np.testing.assert_array_equal(
        params["b"], (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().numpy().astype(np.float64)
    )
    x = np.random.default_rng(1).standard_normal((6, 2, 4)).astype(np.float32)
    model, params = interop.from_torch(rnn, linear)  # a module: its nonlinearity, no argument
    assert model.cell == "relu"
    states, logits = model.forward(params, x)
    out, _ = rnn(torch.tensor(x))
    assert rel_err(logits, linear(out).detach().numpy()) < 1e-6  # float32: the sums' rounding
    assert rel_err(states, out.detach().numpy()) < 1e-6


def test_no_bias_and_other_backends() -> None:
    model = bptt.RNN(3, 4, 2, bias=False, layers=2)
    params = model.init(dtype="float64", seed=0)
    rnn_state, linear_state = interop.to_torch(model, params)
    assert sorted(rnn_state) == ["weight_hh_l0", "weight_hh_l1", "weight_ih_l0", "weight_ih_l1"]
    assert sorted(linear_state) == ["weight"]
    rnn, linear = interop.torch_modules(model, params)
    assert rnn.bias is False and linear.bias is None
    be = backends.get_backend("array_api_strict", "device1")
    same, there = interop.from_torch(rnn, linear, backend="array_api_strict", device="device1")
    assert same == model
    assert all(v.device == be.device for v in there.values()) and list(there) == list(params)
    again, _ = interop.to_torch(model, there)  # from a device that refuses NumPy: via its transfer
    torch.testing.assert_close(again["weight_hh_l1"], rnn_state["weight_hh_l1"], rtol=0, atol=0)


def test_what_cannot_be_converted_is_refused() -> None:
    rnn, linear = torch.nn.RNN(4, 5, batch_first=True), torch.nn.Linear(5, 3)
    with pytest.raises(ValueError, match="batch_first=True"):
        interop.from_torch(rnn, linear)
    with pytest.raises(ValueError, match="cell: 'tanh', but the torch module's cell is 'lstm'"):
        interop.from_torch(torch.nn.LSTM(4, 5).state_dict(), linear, cell="tanh")
    with pytest.raises(ValueError, match="proj_size=2: an LSTM whose h is projected"):
        interop.from_torch(torch.nn.LSTM(4, 5, proj_size=2), linear)
    state = torch.nn.RNN(4, 5, num_layers=2).state_dict()
    del state["bias_hh_l1"]
    with pytest.raises(ValueError, match=r"rnn: keys \['bias_hh_l1'\] are missing"):
        interop.from_torch(state, linear)
    with pytest.raises(ValueError, match=r"params\['V'\]: expected shape"):
        interop.from_torch(torch.nn.RNN(4, 5), torch.nn.Linear(7, 3))
    with pytest.raises(TypeError, match="expected a torch module or its state dict"):
        interop.from_torch(torch.nn.RNN(4, 5), 3)
    with pytest.raises(ValueError, match="cell: 'tanh', but the torch module's cell is 'relu'"):
        interop.from_torch(torch.nn.RNN(4, 5, nonlinearity="relu"), linear, cell="tanh")
    with pytest.raises(ValueError, match="cell: expected one of"):
        bptt.RNN(3, 4, 2, cell="gelu")


def test_torch_is_imported_only_when_called() -> None:
    code = "import sys, bptt, bptt.api.interop; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
