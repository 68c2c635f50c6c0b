"""The model value bptt.RNN: what a network is travels with its parameters.

- it is a frozen, hashable value whose fields are checked when it is made (the error
  names the field), and it is the template parameters are checked against;
- a relu stack equals torch.nn.RNN(nonlinearity="relu", num_layers=2) + Linear to 1e-12;
- a relu run whose states are far above 1 writes checkpoints that resume bit for bit,
  sample and evaluate, on every backend (class 1 of the reliability issue);
- the older calls on a bare dict are thin wrappers of the same model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import rel_err
from train_helpers import small_corpus, small_trainer

import bptt
from bptt import backends, train
from bptt.api import interop
from bptt.evaluation.heldout import validation_score
from bptt.text.sample import sample
from bptt.train.checkpoint import BEST, LATEST, load_checkpoint

NUMPY = backends.get_backend("numpy")


def test_a_model_is_a_checked_frozen_value() -> None:
    model = bptt.RNN(5, 8, 5, cell="relu", layers=2)
    assert model == bptt.RNN(5, 8, 5, cell="relu", layers=2)
    assert hash(model) == hash(bptt.RNN(5, 8, 5, cell="relu", layers=2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.cell = "tanh"  # type: ignore[misc]
    assert bptt.RNN.from_config(model.config()) == model
    assert model.replace(cell="tanh").cell == "tanh"
    bad = [
        ({"hidden_size": 0}, "hidden_size"),
        ({"cell": "gelu"}, "cell"),
        ({"layers": 1.5}, "layers"),
        ({"head": "hinge"}, "head"),
        ({"bidirectional": 1}, "bidirectional"),
        ({"initializer": "he"}, "initializer"),
    ]
    for change, field in bad:
        with pytest.raises(ValueError, match=f"^{field}: "):
            bptt.RNN(**{**dict(input_size=5, hidden_size=8, output_size=5), **change})
    with pytest.raises(ValueError, match=r"model: unknown field\(s\) \['nonlinearity'\]"):
        bptt.RNN.from_config({**model.config(), "nonlinearity": "relu"})


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"layers": 3},
        {"bidirectional": True, "bias": False},
        {"layers": 2, "bidirectional": True, "initializer": "xavier"},
    ],
)
def test_the_template_is_what_init_builds(kw) -> None:
    model = bptt.RNN(6, 4, 3, **kw)
    params = model.init(seed=2, dtype="float64")
    assert list(params) == list(model.param_names()) == list(model.param_shapes())
    assert {k: v.shape for k, v in params.items()} == model.param_shapes()
    assert bptt.RNN.from_params(params, initializer=model.initializer) == model
    old = bptt.init_params(
        6,
        4,
        3,
        num_layers=kw.get("layers", 1),
        seed=2,
        dtype="float64",
        bidirectional=kw.get("bidirectional", False),
        bias=kw.get("bias", True),
        init=kw.get("initializer", "uniform"),
    )
    for key in params:  # the older call draws the very same values
        np.testing.assert_array_equal(params[key], old[key], err_msg=key)


def test_parameters_of_another_model_are_refused_by_name() -> None:
    model = bptt.RNN(5, 8, 5, layers=2)
    params = model.init(dtype="float64")
    x = np.zeros((3, 2), dtype=np.int64)
    one_layer = bptt.RNN(5, 8, 5).init(dtype="float64")
    with pytest.raises(ValueError, match=r"params: missing key\(s\) \['U_l1', 'W_l1'"):
        model.forward(one_layer, x)
    with pytest.raises(ValueError, match=r"params\['W'\]: expected shape \(8, 8\)"):
        model.forward({**params, "W": np.zeros((8, 7))}, x)
    with pytest.raises(ValueError, match=r"params: unknown key\(s\) \['U_l2'\]"):
        model.forward({**params, "U_l2": params["U_l1"]}, x)


def test_a_relu_stack_equals_torch() -> None:
    """Losses and every gradient of RNN(cell="relu", layers=2) against torch.nn.RNN(relu,
    num_layers=2) + Linear + cross-entropy under autograd, float64, to 1e-12."""
    model = bptt.RNN(6, 7, 5, cell="relu", layers=2)
    params = model.init(seed=3, dtype="float64")
    rng = np.random.default_rng(0)
    params = {k: v + rng.uniform(-0.1, 0.1, v.shape) for k, v in params.items()}  # b, c != 0
    x, y = rng.integers(0, 6, (9, 4)), rng.integers(0, 5, (9, 4))
    h0 = rng.uniform(-0.5, 0.5, (2, 4, 7))
    loss, grads, h_last = model.loss_and_grad(params, x, y, h0=h0)
    rnn, linear = interop.torch_modules(model, params)
    assert (rnn.nonlinearity, rnn.num_layers) == ("relu", 2)
    out, h_n = rnn(torch.nn.functional.one_hot(torch.tensor(x), 6).double(), torch.tensor(h0))
    logits = linear(out)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 5), torch.tensor(y).reshape(-1))
    ref.backward()
    assert abs(float(loss) - ref.item()) <= 1e-12 * abs(ref.item())
    assert rel_err(h_last, h_n.detach().numpy()) < 1e-12
    torch_grad = {"V": linear.weight.grad, "c": linear.bias.grad}
    for layer in range(2):
        s = "" if layer == 0 else f"_l{layer}"
        torch_grad.update({f"U{s}": getattr(rnn, f"weight_ih_l{layer}").grad,
                           f"W{s}": getattr(rnn, f"weight_hh_l{layer}").grad,
                           f"b{s}": getattr(rnn, f"bias_ih_l{layer}").grad})  # fmt: skip
    assert set(torch_grad) == set(grads)
    for key, g in torch_grad.items():
        assert rel_err(grads[key], g.numpy()) < 1e-12, key


def _relu_trainer(be, tmp_path, **kw) -> train.Trainer:
    return small_trainer(be, tmp_path, cell="relu", lr=0.2, **kw)


@pytest.mark.parametrize("kw", [{}, {"layers": 2, "dropout": 0.1}])
def test_a_relu_run_resumes_samples_and_evaluates(be, tmp_path, kw) -> None:
    """States far above 1 are a relu run's normal state: every reader takes them."""
    first = _relu_trainer(be, tmp_path, **kw)
    first.run(steps=10)
    ckpt = load_checkpoint(tmp_path / LATEST)
    assert np.max(np.abs(ckpt.hidden)) > 1.1  # a tanh state could not be here
    model = ckpt.model
    assert model == first.model and model.cell == "relu"
    resumed = train.Trainer.resume(ckpt, small_corpus(), backend=be)
    resumed.run(steps=14)
    straight = _relu_trainer(be, None, **kw)
    straight.run(steps=14)
    for key, value in straight.checkpoint().params.items():
        np.testing.assert_array_equal(value, resumed.checkpoint().params[key], err_msg=key)
    best = load_checkpoint(tmp_path / BEST)
    params = {k: be.asarray(v, dtype=v.dtype.name) for k, v in best.params.items()}
    text = sample(best.model, params, best.vocab, length=20, prime="if ")
    assert len(text) == 20
    bpc, count = validation_score(best.model, params, small_corpus().val, streams=2, warmup=4,
                                  backend=be, dtype=best.params["U"].dtype.name)  # fmt: skip
    assert np.isfinite(bpc) and count > 0


def test_sampling_a_relu_model_runs_relu() -> None:
    """The model, not a repeated keyword, decides the cell: relu and tanh sample apart."""
    model = bptt.RNN(5, 16, 5, cell="relu")
    params = {k: v * 4 for k, v in model.init(seed=1, dtype="float64").items()}
    relu = sample(model, params, "abcde", length=40, seed=3)
    tanh = sample(model.replace(cell="tanh"), params, "abcde", length=40, seed=3)
    assert relu != tanh


def test_the_functional_calls_are_the_models() -> None:
    model = bptt.RNN(4, 6, 3, cell="relu", layers=2, head="mse")
    params = model.init(seed=0, dtype="float64")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 2, 4)), rng.standard_normal((5, 2, 3))
    a = model.loss_and_grad(params, x, y)
    b = bptt.loss_and_grad(params, x, y, nonlinearity="relu", head="mse")
    assert float(a[0]) == float(b[0])
    for key in params:
        np.testing.assert_array_equal(a[1][key], b[1][key])


CLI_MODELS = [  # every kind of model `bptt train` can make, far from its initial range
    ["--cell", "tanh"],
    ["--cell", "relu", "--lr", "0.2"],
    ["--cell", "relu", "--layers", "2", "--lr", "0.2"],
    ["--cell", "gru", "--layers", "2", "--dropout", "0.1", "--lr", "0.05"],
    ["--cell", "lstm", "--lr", "0.05"],
    ["--cell", "lstm", "--layers", "2", "--lr", "0.05"],
]
TINY = [
    "--hidden",
    "12",
    "--batch",
    "4",
    "--seq-len",
    "16",
    "--eval-every",
    "5",
    "--log-every",
    "5",
    "--sample-length",
    "10",
    "--no-progress",
    "--backend",
    "numpy",
]


@pytest.mark.parametrize("options", CLI_MODELS, ids=lambda o: " ".join(o))
def test_every_model_the_cli_trains_is_read_back(options, tmp_path, capsys) -> None:
    """Class 1: what `bptt train` writes, `train --resume`, `sample`, `evaluate` and
    `diagnose` read, whatever the cell, layers and the size of its weights and states."""
    from bptt import cli

    text = tmp_path / "text.txt"
    text.write_text(small_corpus().vocab.decode(small_corpus().train), encoding="utf-8")
    run = tmp_path / "run"
    common = ["--text", str(text), *TINY]
    assert (
        cli.main(["train", *common, *options, "--steps", "10", "--checkpoint-dir", str(run)]) == 0
    )
    ckpt = load_checkpoint(run / LATEST)
    assert ckpt.model.cell == options[1]
    assert cli.main(["train", "--text", str(text), "--resume", str(run), "--steps", "15",
                     "--no-progress"]) == 0  # fmt: skip
    assert load_checkpoint(run / LATEST).step == 15
    capsys.readouterr()
    assert cli.main(["sample", str(run), "--length", "20", "--prime", "if "]) == 0
    assert capsys.readouterr().out.startswith("if ")
    assert cli.main(["evaluate", str(run), "--text", str(text)]) == 0
    assert "bits/char" in capsys.readouterr().out
    assert cli.main(["diagnose", str(run / LATEST), "--seq-len", "8", "--batch", "2"]) == 0
