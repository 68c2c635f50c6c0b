"""An independent reference: the same model written in torch, differentiated by autograd."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from helpers import rel_err

import bptt


def torch_loss_and_grad(host: dict[str, Any]) -> tuple[float, dict[str, np.ndarray], np.ndarray]:
    """Loss, gradients and last state from torch autograd, in float64."""
    keys = [k for k in ("U", "W", "V", "b", "c") if k in host]
    p = {k: torch.tensor(host[k], dtype=torch.float64, requires_grad=True) for k in keys}
    D, M = p["U"].shape
    C = p["V"].shape[0]
    x = torch.as_tensor(host["inputs"])
    if x.ndim == 2:
        x = F.one_hot(x.long(), M).to(torch.float64)  # the seed's one-hot x_t
    else:
        x = x.to(torch.float64)
    T, B = x.shape[:2]
    s = torch.zeros(B, D, dtype=torch.float64)
    if host.get("h0") is not None:
        s = torch.as_tensor(host["h0"], dtype=torch.float64)
    logits = []
    for t in range(T):
        z = x[t] @ p["U"].T + s @ p["W"].T + (p["b"] if "b" in p else 0)
        s = torch.tanh(z)
        logits.append(s @ p["V"].T + (p["c"] if "c" in p else 0))
    g = torch.stack(logits)  # (T, B, C)
    mask = host.get("mask")
    w = (
        torch.ones(T, B, dtype=torch.float64)
        if mask is None
        else torch.as_tensor(mask).to(torch.float64)
    )
    if host["head"] == "softmax":
        y = torch.as_tensor(host["targets"]).long()
        terms = F.cross_entropy(g.reshape(T * B, C), y.reshape(-1), reduction="none").reshape(T, B)
        per_element = 1
    else:
        y = torch.as_tensor(host["targets"], dtype=torch.float64).reshape(T, B, C)
        terms = F.binary_cross_entropy_with_logits(g, y, reduction="none").sum(-1)
        per_element = C
    loss = (terms * w).sum()
    if host["reduction"] == "mean":
        loss = loss / (w.sum() * per_element)
    loss.backward()
    grads = {k: p[k].grad.numpy() for k in keys}
    return float(loss.detach()), grads, s.detach().numpy()


def assert_matches_torch(prob: Any, schedule: str | None = None) -> dict[str, Any]:
    """``bptt.loss_and_grad`` on a float64 NumPy problem (tests/helpers.py) against
    torch autograd: loss to 1e-12, every gradient to 1e-12, h_last to 1e-13.
    Returns our gradients."""
    loss, grads, h_last = bptt.loss_and_grad(
        prob.params, prob.inputs, prob.targets, schedule=schedule, **prob.kwargs
    )
    ref_loss, ref_grads, ref_h = torch_loss_and_grad(prob.host)
    assert abs(float(loss) - ref_loss) <= 1e-12 * abs(ref_loss)
    for key in grads:
        assert rel_err(grads[key], ref_grads[key]) < 1e-12, key
    np.testing.assert_allclose(h_last, ref_h, rtol=1e-13, atol=1e-15)
    return grads


def torch_stack_reference(host: dict[str, Any], *, layers: int, bidirectional: bool,
                          nonlinearity: str) -> dict[str, Any]:  # fmt: skip
    """A bptt problem (``host``: our parameter names, inputs, targets, head, reduction,
    optional mask and h0) through ``torch.nn.RNN(num_layers, nonlinearity, bidirectional)``
    + ``Linear`` + the matching loss, differentiated by autograd in float64.

    The weights are copied in by hand (not through bptt.api.interop, which is tested
    against this): ``weight_ih_l{l}[_reverse]`` = U{s}, ``weight_hh`` = W{s},
    ``bias_ih`` = b{s}, ``bias_hh`` = 0. Returns the loss, our-named gradients, the
    logits and their gradient dL/dg, dL/dinputs (dense inputs), dL/dh0 (h0 as our
    shape; zeros when none was given) and h_n (as our h_last).
    """
    from bptt.math.layers import suffix

    K = 2 if bidirectional else 1
    D, M = host["U"].shape
    C = host["V"].shape[0]
    bias = "b" in host
    f64 = torch.float64
    rnn = torch.nn.RNN(M, D, num_layers=layers, nonlinearity=nonlinearity, bias=bias,
                       bidirectional=bidirectional, dtype=f64)  # fmt: skip
    lin = torch.nn.Linear(K * D, C, bias="c" in host, dtype=f64)
    names = {}  # our name -> torch parameter
    with torch.no_grad():
        for layer in range(layers):
            for d in range(K):
                s, t = suffix(layer, d), f"_l{layer}" + ("_reverse" if d else "")
                names[f"U{s}"], names[f"W{s}"] = (getattr(rnn, f"weight_ih{t}"),
                                                  getattr(rnn, f"weight_hh{t}"))  # fmt: skip
                if bias:
                    names[f"b{s}"] = getattr(rnn, f"bias_hh{t}")  # dL/db = dL/dbias_hh
                    getattr(rnn, f"bias_ih{t}").copy_(torch.tensor(host[f"b{s}"]))
                    getattr(rnn, f"bias_hh{t}").zero_()
        names["V"] = lin.weight
        if "c" in host:
            names["c"] = lin.bias
        for key, tensor in names.items():
            if key[0] in "UWV":
                tensor.copy_(torch.tensor(host[key]))
            elif key == "c":
                tensor.copy_(torch.tensor(host["c"]))
    x = torch.as_tensor(host["inputs"])
    x = F.one_hot(x.long(), M).to(f64) if x.ndim == 2 else x.to(f64)
    x.requires_grad_(True)
    T, B = x.shape[:2]
    h0 = host.get("h0")
    h0 = np.zeros((layers * K, B, D)) if h0 is None else np.reshape(h0, (layers * K, B, D))
    h0t = torch.tensor(h0, dtype=f64, requires_grad=True)
    out, h_n = rnn(x, h0t)
    g = lin(out)  # (T, B, C)
    g.retain_grad()
    mask = host.get("mask")
    w = torch.ones(T, B, dtype=f64) if mask is None else torch.as_tensor(mask).to(f64)
    head = host["head"]
    if head == "softmax":
        y = torch.as_tensor(host["targets"]).long().reshape(-1)
        terms, per_element = F.cross_entropy(g.reshape(T * B, C), y, reduction="none"), 1
    elif head == "sigmoid":
        y = torch.as_tensor(host["targets"], dtype=f64).reshape(T, B, C)
        terms = F.binary_cross_entropy_with_logits(g, y, reduction="none").sum(-1)
        per_element = C
    else:
        y = torch.as_tensor(host["targets"], dtype=f64).reshape(T, B, C)
        terms, per_element = F.mse_loss(g, y, reduction="none").sum(-1), C
    loss = (terms.reshape(T, B) * w).sum()
    if host["reduction"] == "mean":
        loss = loss / (w.sum() * per_element)
    loss.backward()
    single = layers * K == 1
    shape = (B, D) if single else (layers * K, B, D)
    return {
        "loss": float(loss.detach()),
        "grads": {k: t.grad.numpy().copy() for k, t in names.items()},
        "logits": g.detach().numpy(),
        "dlogits": g.grad.numpy().copy(),
        "d_inputs": x.grad.numpy().copy(),
        "d_h0": h0t.grad.numpy().reshape(shape),
        "h_last": h_n.detach().numpy().reshape(shape),
        "states": out.detach().numpy(),
    }
