"""Gradient flow through gated cells: ||dL_t/dh_k|| (and, for LSTM, ||dL_t/dc_k||, the
flow through the cell state) against torch autograd of each step's loss, taken through
torch.nn.GRUCell / LSTMCell one step at a time; the vanilla cell's sweep and the generic
one agree; `bptt diagnose` prints the cell state's flow for an LSTM checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bptt
from bptt.api import interop
from bptt.evaluation.diagnostics import cell_gradient_sweep, gradient_flow, state_gradient_sweep
from bptt.math.cells import get_cell

M, D, C, T, B = 4, 5, 3, 6, 2


def _torch_norms(model, params, x, y, mask):
    """norms[t, k] = ||dL_t/dh_k|| and ||dL_t/dc_k|| with L_t step t's share of the
    masked mean cross-entropy, by autograd through the torch cell, step by step."""
    rnn, linear = interop.torch_modules(model, params)
    Cell = {"gru": torch.nn.GRUCell, "lstm": torch.nn.LSTMCell}[model.cell]
    cell = Cell(M, D, dtype=torch.float64)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in rnn.state_dict().items()})
    h = torch.zeros(B, D, dtype=torch.float64)
    c = torch.zeros(B, D, dtype=torch.float64)
    hs, cs, losses = [], [], []
    weights = torch.tensor(mask, dtype=torch.float64) / mask.sum()
    for t in range(T):
        xt = torch.nn.functional.one_hot(torch.tensor(x[t]), M).double()
        if model.cell == "lstm":
            h, c = cell(xt, (h, c))
            cs.append(c)
        else:
            h = cell(xt, h)
        hs.append(h)
        ce = torch.nn.functional.cross_entropy(linear(h), torch.tensor(y[t]), reduction="none")
        losses.append((ce * weights[t]).sum())
    norms = np.zeros((T, T))
    cell_norms = np.zeros((T, T))
    for t in range(T):
        wrt = hs[: t + 1] + cs[: t + 1]
        grads = torch.autograd.grad(losses[t], wrt, retain_graph=True, allow_unused=True)
        for k in range(t + 1):
            norms[t, k] = float(torch.linalg.norm(grads[k]))
            if cs:
                cell_norms[t, k] = float(torch.linalg.norm(grads[t + 1 + k]))
    return norms, cell_norms


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_gradient_flow_equals_torch(cell) -> None:
    model = bptt.RNN(M, D, C, cell=cell)
    rng = np.random.default_rng(0)
    params = {k: v + rng.uniform(-0.3, 0.3, v.shape)
              for k, v in model.init(seed=1, dtype="float64").items()}  # fmt: skip
    x, y = rng.integers(0, M, (T, B)), rng.integers(0, C, (T, B))
    mask = rng.random((T, B)) < 0.8
    mask[:, 0] = True
    flow = gradient_flow(model, params, x, y, mask=mask)
    norms, cell_norms = _torch_norms(model, params, x, y, mask)
    np.testing.assert_allclose(np.asarray(flow.norms), norms, rtol=1e-10, atol=1e-15)
    if cell == "lstm":
        np.testing.assert_allclose(np.asarray(flow.cell_norms), cell_norms, rtol=1e-10,
                                   atol=1e-15)  # fmt: skip
    else:
        assert flow.cell_norms is None
    assert np.isnan(flow.spectral_radius) and flow.max_singular_value > 0  # W is (3 D, D)


def test_the_generic_sweep_is_the_vanilla_sweep() -> None:
    """The one-step reverse recurrence with the rows' gradients as ``d_last`` gives the
    vanilla cell's own sweep (the chain diag(f') W of eq. (B15)) to rounding."""
    model = bptt.RNN(M, D, C, cell="relu")
    params = model.init(seed=2, dtype="float64")
    rng = np.random.default_rng(3)
    x = rng.integers(0, M, (T, B))
    out, cache = bptt.math.layers.forward(params, x, None, np, cell="relu")
    dS = rng.standard_normal((T, B, D))
    p = bptt.math.layers.cell_params(params, 0, 0)
    want = dict(state_gradient_sweep(out.states, dS, params["W"], np, "relu"))
    for k, G, Gc in cell_gradient_sweep(get_cell("relu"), p, cache.states[0], cache.aux[0], dS,
                                        np):  # fmt: skip
        assert Gc is None
        np.testing.assert_allclose(G, want[k], rtol=1e-12, atol=1e-15)


def test_diagnose_prints_the_cell_state_flow(tmp_path, capsys) -> None:
    from bptt import cli

    assert cli.main(["diagnose", "--init", "--cell", "lstm", "--hidden", "8", "--vocab", "6",
                     "--seq-len", "12", "--batch", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "lstm" in out and "cell state" in out


def test_the_side_by_side_benchmark_runs(tmp_path, capsys) -> None:
    """benchmarks/gradient_flow_cells.py (docs/gradient-flow.md's table and picture) at a
    tiny size: a row per curve, the LSTM's cell state among them, and the figure."""
    import sys
    from pathlib import Path

    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import gradient_flow_cells

    figure = tmp_path / "flow.png"
    assert gradient_flow_cells.main(["--steps", "2", "--hidden", "8", "--seq-len", "12",
                                     "--batch", "2", "--plot", str(figure)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| tanh h |" in out and "| gru h |" in out and "| lstm c (cell state) |" in out
    assert figure.stat().st_size > 0
