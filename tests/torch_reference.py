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
