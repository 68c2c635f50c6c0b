"""Gradient-flow diagnostics: torch autograd, the backward pass, the lag curve, the CLI."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import NUMPY_BACKEND, assert_close, make_problem

import bptt
from bptt import cli
from bptt.evaluation.diagnostics import gradient_flow, spectral_stats, state_gradient_sweep
from bptt.text import data
from bptt.train import TrainConfig, Trainer


def torch_state_gradient_norms(host: dict[str, Any]) -> np.ndarray:
    """norms[t, k] = ||dL_t/ds_k|| (Frobenius over (B, D)) by torch autograd, float64."""
    p = {
        k: torch.tensor(host[k], dtype=torch.float64)
        for k in ("U", "W", "V", "b", "c")
        if k in host
    }
    p["W"].requires_grad_(True)  # so that the states join the graph
    D, M = p["U"].shape
    C = p["V"].shape[0]
    x = torch.as_tensor(host["inputs"])
    x = F.one_hot(x.long(), M).double() if x.ndim == 2 else x.double()
    T, B = x.shape[:2]
    s = torch.as_tensor(host["h0"]) if host.get("h0") is not None else torch.zeros(B, D).double()
    states, logits = [], []
    for t in range(T):
        s = torch.tanh(x[t] @ p["U"].T + s @ p["W"].T + p.get("b", 0))
        states.append(s)
        logits.append(s @ p["V"].T + p.get("c", 0))
    g = torch.stack(logits)  # (T, B, C)
    m = (
        torch.ones(T, B).double()
        if host.get("mask") is None
        else torch.as_tensor(host["mask"]).double()
    )
    if host["head"] == "softmax":
        y = torch.as_tensor(host["targets"]).long().reshape(-1)
        terms = F.cross_entropy(g.reshape(T * B, C), y, reduction="none").reshape(T, B)
        per_element = 1
    else:
        y = torch.as_tensor(host["targets"]).double().reshape(T, B, C)
        terms = F.binary_cross_entropy_with_logits(g, y, reduction="none").sum(-1)
        per_element = C
    w = m / (m.sum() * per_element) if host["reduction"] == "mean" else m
    norms = np.zeros((T, T))
    for t in range(T):
        L_t = (terms[t] * w[t]).sum()
        grads = torch.autograd.grad(L_t, states[: t + 1], retain_graph=True)
        norms[t, : t + 1] = [float(gk.norm()) for gk in grads]
    return norms


def flow_of(prob: Any, **kwargs: Any) -> Any:
    """:func:`gradient_flow` of a :func:`make_problem` problem: its model carries the head."""
    kwargs = {**prob.kwargs, **kwargs}
    model = bptt.RNN.from_params(prob.params, head=kwargs.pop("head", "softmax"))
    return gradient_flow(model, prob.params, prob.inputs, prob.targets, **kwargs)


def lag_mean_of(norms: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Mean of each subdiagonal over the counting rows: the definition, written plainly."""
    T = norms.shape[0]
    out = np.full(T, np.nan)
    for lag in range(T):
        rows = [t for t in range(lag, T) if steps[t]]
        if rows:
            out[lag] = np.mean([norms[t, t - lag] for t in rows])
    return out


CONFIGS = [
    dict(head="softmax", ids=True, bias=True, mask=False, h0=False, reduction="mean"),
    dict(head="softmax", ids=False, bias=False, mask=True, h0=True, reduction="sum"),
    dict(head="sigmoid", ids=True, bias=True, mask=True, h0=False, reduction="mean"),
    dict(head="sigmoid", ids=False, bias=True, mask=False, h0=True, reduction="sum"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['head']}-{c['reduction']}")
def test_matches_torch_autograd(be64, cfg: dict) -> None:
    """Every ||dL_t/ds_k|| against autograd, on every float64 backend; results stay there."""
    prob = make_problem(be64, np.random.default_rng(3), T=6, B=3, M=4, D=5, C=3, **cfg)
    if cfg["mask"]:  # one step that no sequence counts: its row is zero, its loss is absent
        prob.host["mask"][2, :] = False
        prob.kwargs["mask"] = be64.asarray(prob.host["mask"])
    flow = flow_of(prob)
    ref = torch_state_gradient_norms(prob.host)
    steps = np.ones(6, bool) if not cfg["mask"] else prob.host["mask"].any(axis=1)
    assert_close(flow.norms, ref, be64, rtol=1e-10, atol=1e-300)
    assert_close(flow.lag_mean, lag_mean_of(ref, steps), be64, rtol=1e-10)
    assert np.array_equal(be64.to_numpy(flow.steps), steps)
    assert np.all(np.triu(be64.to_numpy(flow.norms), 1) == 0)
    W = prob.host["W"]
    assert flow.spectral_radius == pytest.approx(max(abs(np.linalg.eigvals(W))), rel=1e-12)
    assert flow.max_singular_value == pytest.approx(np.linalg.svd(W)[1][0], rel=1e-12)


def test_float32_on_every_backend(be) -> None:
    """float32 on every backend and device (no_float64 and device1 included) agrees with float64."""
    prob = make_problem(be, np.random.default_rng(5), T=5, B=2, dtype="float32", mask=True)
    flow = flow_of(prob)
    ref = make_problem(NUMPY_BACKEND, np.random.default_rng(5), T=5, B=2, mask=True)
    want = flow_of(ref)
    assert flow.norms.dtype == prob.params["W"].dtype
    assert_close(flow.norms, want.norms, be, rtol=1e-4, atol=1e-9)
    assert_close(flow.lag_mean, want.lag_mean, be, rtol=1e-4)


def test_rows_sum_to_the_backward_pass(be64) -> None:
    """Sum over t of dL_t/ds_k is dL/ds_k: rebuilt into dW, db, dU it gives loss_and_grad's."""
    prob = make_problem(be64, np.random.default_rng(11), T=5, B=3, ids=False, h0=True, mask=True)
    _, grads, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **prob.kwargs)
    states, logits = bptt.forward(prob.params, prob.inputs, h0=prob.kwargs["h0"])
    h = prob.host
    S, Y = be64.to_numpy(states), np.eye(3)[h["targets"]]  # (T, B, D), (T, B, C)
    G = be64.to_numpy(logits)
    P = np.exp(G - G.max(-1, keepdims=True))
    w = h["mask"] / h["mask"].sum()
    dS = ((P / P.sum(-1, keepdims=True) - Y) * w[..., None]) @ h["V"]  # eqs. (B9), (B11)
    sweep = state_gradient_sweep(
        states, be64.asarray(dS, dtype="float64"), prob.params["W"], be64.xp
    )
    dZ = np.zeros_like(S)
    for k, rows in sweep:
        dZ[k] = be64.to_numpy(be64.xp.sum(rows, axis=0)) * (1 - S[k] ** 2)  # (B12) from (B14)
    prev = np.concatenate([h["h0"][None], S[:-1]])  # s_0 .. s_{T-1}
    np.testing.assert_allclose(
        np.einsum("tbi,tbj->ij", dZ, prev), be64.to_numpy(grads["W"]), rtol=1e-12
    )
    np.testing.assert_allclose(dZ.sum((0, 1)), be64.to_numpy(grads["b"]), rtol=1e-12, atol=1e-15)
    dU = np.einsum("tbi,tbj->ij", dZ, h["inputs"])
    np.testing.assert_allclose(dU, be64.to_numpy(grads["U"]), rtol=1e-12)


def test_bound_and_linear_regime() -> None:
    """(B16): ||dL_t/ds_k|| <= sigma^(t-k) ||dL_t/ds_t||; equality for W = r Q near s = 0."""
    T, D = 12, 6
    rng = np.random.default_rng(2)
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    for r in (0.5, 1.0, 2.0):
        params = {
            "U": 1e-9 * rng.standard_normal((D, 3)),
            "W": r * Q,
            "V": rng.standard_normal((2, D)),
        }
        model = bptt.RNN.from_params(params)
        flow = gradient_flow(model, params, rng.integers(0, 3, (T, 4)), rng.integers(0, 2, (T, 4)))
        assert flow.spectral_radius == pytest.approx(
            r
        ) and flow.max_singular_value == pytest.approx(r)
        diag = np.diag(flow.norms)
        lags = np.subtract.outer(np.arange(T), np.arange(T))
        bound = np.tril(diag[:, None] * r ** np.maximum(lags, 0))
        assert np.all(flow.norms <= bound * (1 + 1e-12))
        # states < 1e-5, so tanh' = 1 - O(1e-10) and the bound is met almost exactly
        np.testing.assert_allclose(flow.norms, bound, rtol=1e-6)
        rows_mean = np.array([diag[lag:].mean() for lag in range(T)])  # rows t >= lag
        np.testing.assert_allclose(flow.lag_mean, rows_mean * r ** np.arange(T), rtol=1e-6)
    # saturated states: far below the linear prediction for r = 2
    params["U"] = 3 * rng.standard_normal((D, 3))
    flow = gradient_flow(model, params, rng.integers(0, 3, (T, 4)), rng.integers(0, 2, (T, 4)))
    assert flow.lag_mean[T - 1] / flow.lag_mean[0] < 0.1 * 2.0 ** (T - 1)


def test_lag_that_no_counting_step_reaches_is_nan() -> None:
    prob = make_problem(NUMPY_BACKEND, np.random.default_rng(1), T=4, B=2)
    mask = np.zeros((4, 2), bool)
    mask[1, 0] = True  # only step 2 of sequence 0 counts: lags 0 and 1 only
    flow = flow_of(prob, mask=mask)
    assert np.array_equal(flow.steps, [False, True, False, False])
    assert np.all(flow.norms[[0, 2, 3]] == 0) and np.all(flow.norms[1, :2] > 0)
    assert np.array_equal(flow.lag_mean[:2], flow.norms[1, [1, 0]])
    assert np.all(np.isnan(flow.lag_mean[2:]))


def test_spectral_stats_on_a_device_without_implicit_conversion() -> None:
    be = bptt.backends.get_backend("array_api_strict", "device1")
    W = be.asarray([[0.0, 2.0], [-0.5, 0.0]], dtype="float64")  # eigenvalues +-i, sigma 2
    assert spectral_stats(W) == pytest.approx((1.0, 2.0))


def test_diagnose_init_plots(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib", reason="the 'plot' extra is not installed")
    out = tmp_path / "flow.png"
    argv = ["diagnose", "--init", "--hidden", "8", "--vocab", "5", "--seq-len", "6"]
    argv += ["--batch", "2", "--spectral-radius", "0.5", "2", "--plot", str(out)]
    assert cli.main(argv) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "rho(W) = 0.5," in text and "rho(W) = 2," in text


def _checkpoint(tmp_path, text: str) -> tuple[str, dict]:
    """A 3-step run on ``text`` (a file in tmp_path), saved as tmp_path/latest.npz."""
    path = tmp_path / "text.txt"
    path.write_text(text)
    corpus = data.load_corpus(text=path)
    config = TrainConfig(hidden=7, batch=2, seq_len=5, eval_every=3, sample_length=2,
                         val_streams=2)  # fmt: skip
    trainer = Trainer.create(corpus, config, checkpoint_dir=tmp_path)
    trainer.run(steps=3)
    params = {k: np.asarray(v) for k, v in trainer.params.items()}
    return str(tmp_path / "latest.npz"), params


def test_diagnose_checkpoint_on_its_text(tmp_path, capsys) -> None:
    path, params = _checkpoint(tmp_path, "abcab cba " * 40)
    text = tmp_path / "text.txt"
    argv = ["diagnose", path, "--text", str(text), "--seq-len", "5", "--batch", "2"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "(step 3)" in out and f"held-out text of {text}" in out
    assert f"rho(W) = {spectral_stats(params['W'])[0]:.3g}," in out


def test_diagnose_checkpoint_without_text_uses_random_ids(tmp_path, capsys) -> None:
    _checkpoint(tmp_path, "xyz zy" * 60)  # trained on a file: no built-in text to draw from
    assert cli.main(["diagnose", str(tmp_path), "--seq-len", "4", "--spectral-radius", "1.5"]) == 0
    out = capsys.readouterr().out
    assert "random token ids" in out and "rho(W) = 1.5," in out


def test_diagnose_needs_exactly_one_source(tmp_path, capsys) -> None:
    for argv in (["diagnose"], ["diagnose", str(tmp_path / "x.npz"), "--init"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        assert "CHECKPOINT or --init" in capsys.readouterr().err
