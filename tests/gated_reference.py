"""A one-layer gated model two ways: our cells (bptt.math.gru, bptt.math.lstm) composed by hand with
bptt.math.model.output and a bptt.math.heads head, and torch.nn.GRU / torch.nn.LSTM + Linear + the
matching loss under autograd. Host NumPy in, host NumPy out (float64 for the reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bptt.math import gru, heads, lstm, model
from bptt.math.scan import python_scan

CELLS = {"gru": gru, "lstm": lstm}


@dataclass
class Case:
    """One problem on the host: torch's own weights, our names, data, head, options."""

    cell: str
    torch_weights: dict[str, np.ndarray]  # weight_ih, weight_hh, bias_ih, bias_hh, V, c
    inputs: np.ndarray  # (T, B) ids or (T, B, M)
    targets: np.ndarray
    head: str
    mask: np.ndarray | None
    s0: Any  # None, (B, D) for gru, a pair for lstm
    C: int

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Our parameter names: the cell's own (from_torch_cell) + V, c."""
        w = self.torch_weights
        p = CELLS[self.cell].from_torch_cell(
            w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh")
        )
        p["V"] = w["V"]
        if "c" in w:
            p["c"] = w["c"]
        return p


def make_case(cell: str, rng: np.random.Generator, *, T: int = 5, B: int = 3, M: int = 4,
              D: int = 6, C: int = 3, bias: bool = True, ids: bool = True, h0: bool = False,
              head: str = "softmax", mask: bool = False,
              dtype: Any = np.float64) -> Case:  # fmt: skip
    G = CELLS[cell].GATES
    s = 1.0 / np.sqrt(D)
    w = {
        "weight_ih": rng.uniform(-s, s, (G * D, M)),
        "weight_hh": rng.uniform(-2 * s, 2 * s, (G * D, D)),  # large enough to matter
        "V": rng.uniform(-1, 1, (C, D)),
    }
    if bias:
        w.update(bias_ih=rng.uniform(-0.5, 0.5, G * D), bias_hh=rng.uniform(-0.5, 0.5, G * D),
                 c=rng.uniform(-0.5, 0.5, C))  # fmt: skip
    w = {k: v.astype(dtype) for k, v in w.items()}
    x = rng.integers(0, M, (T, B)) if ids else rng.standard_normal((T, B, M)).astype(dtype)
    if head == "softmax":
        y = rng.integers(0, C, (T, B))
    else:
        y = rng.standard_normal((T, B, C)).astype(dtype)
    m = None
    if mask:
        m = rng.random((T, B)) < 0.7
        m[0, 0] = True
    s0 = None
    if h0:
        parts = [
            rng.uniform(-0.9, 0.9, (B, D)).astype(dtype) for _ in range(CELLS[cell].STATE_PARTS)
        ]
        s0 = parts[0] if cell == "gru" else tuple(parts)
    return Case(cell, w, x, y, head, m, s0, C)


def ours(case: Case, xp: Any, asarray: Any, *, scan: Any = python_scan,
         reduction: str = "mean") -> dict[str, Any]:  # fmt: skip
    """Loss, grads, d_inputs, d_s0 and last state from our cell, arrays of ``xp``."""
    p = {k: asarray(v) for k, v in case.params.items()}
    inputs = asarray(case.inputs)
    s0 = None
    if case.s0 is not None:
        s0 = asarray(case.s0) if case.cell == "gru" else tuple(asarray(a) for a in case.s0)
    mask = None if case.mask is None else asarray(case.mask)
    T, B = case.inputs.shape[:2]
    dtype = p["W"].dtype
    weights = heads.loss_weights(mask, (T, B, case.C), head=case.head, reduction=reduction,
                                 dtype=dtype, xp=xp)  # fmt: skip
    targets = asarray(case.targets)
    return run_cell(CELLS[case.cell], p, inputs, targets, s0, case.head, weights, xp, scan)


def run_cell(cell: Any, p: dict[str, Any], inputs: Any, targets: Any, s0: Any, head: str,
             weights: Any, xp: Any, scan: Any = python_scan) -> dict[str, Any]:  # fmt: skip
    """The one-layer model's forward and backward pass, composed from the cell's parts."""
    xu = model.input_projection(p, inputs, xp)  # (T, B, G D)
    H, aux, last = cell.recurrence(p, xu, s0, xp, scan)
    logits, _ = model.output(p, H[1:, ...], None, xp)
    terms, dlogits = heads.HEADS[head](logits, targets, xp)
    loss, dlogits = heads.reduce(terms, dlogits, weights, xp)
    grads = model.output_grads(p, dlogits, H[1:, ...], xp)
    dS = model.state_grads(p, dlogits, None, xp)
    dXU, dHW, ds0 = cell.reverse_recurrence(p, H, aux, dS, xp, scan)
    grads.update(cell.weight_grads(p, dXU, dHW, H, inputs, xp))
    out = {"loss": loss, "grads": grads, "ds0": ds0,
           "last": last, "H": H}  # fmt: skip
    if inputs.ndim == 3:
        out["dx"] = cell.input_grads(p["U"], dXU, xp)
    return out


def reference(case: Case, reduction: str = "mean") -> dict[str, Any]:
    """The same model in torch (nn.GRU / nn.LSTM + Linear + loss), autograd, float64.

    Gradients of bias_ih and bias_hh are mapped to ours by the sums of eq. (G6)/(L5).
    """
    w = {k: torch.tensor(v, dtype=torch.float64) for k, v in case.torch_weights.items()}
    M = w["weight_ih"].shape[1]
    D = w["weight_hh"].shape[1]
    bias = "bias_ih" in w
    Net = torch.nn.GRU if case.cell == "gru" else torch.nn.LSTM
    rnn = Net(M, D, bias=bias).double()
    lin = torch.nn.Linear(D, case.C, bias=bias).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if name in w:
                getattr(rnn, f"{name}_l0").copy_(w[name])
        lin.weight.copy_(w["V"])
        if bias:
            lin.bias.copy_(w["c"])
    x = torch.as_tensor(case.inputs)
    x = F.one_hot(x.long(), M).double() if x.ndim == 2 else x.double().requires_grad_(True)
    T, B = x.shape[:2]
    hx = None
    if case.s0 is not None:
        parts = [case.s0] if case.cell == "gru" else list(case.s0)
        parts = [torch.tensor(a, dtype=torch.float64)[None].requires_grad_(True) for a in parts]
        hx = parts[0] if case.cell == "gru" else tuple(parts)
    out, last = rnn(x, hx)
    g = lin(out)  # (T, B, C)
    wts = torch.ones(T, B, dtype=torch.float64)
    if case.mask is not None:
        wts = torch.as_tensor(case.mask).double()
    if case.head == "softmax":
        y = torch.as_tensor(case.targets).long().reshape(-1)
        terms = F.cross_entropy(g.reshape(T * B, case.C), y, reduction="none").reshape(T, B)
        per = 1
    else:
        y = torch.as_tensor(case.targets, dtype=torch.float64)
        terms = F.mse_loss(g, y, reduction="none").sum(-1)
        per = case.C
    loss = (terms * wts).sum()
    if reduction == "mean":
        loss = loss / (wts.sum() * per)
    loss.backward()
    gr = {"U": rnn.weight_ih_l0.grad, "W": rnn.weight_hh_l0.grad, "V": lin.weight.grad}
    if bias:
        gih, ghh = rnn.bias_ih_l0.grad, rnn.bias_hh_l0.grad
        if case.cell == "gru":
            gr["b"] = torch.cat([gih[: 2 * D], gih[2 * D :]])  # r, z: = ghh there too
            gr["b_hn"] = ghh[2 * D :]
            assert torch.allclose(gih[: 2 * D], ghh[: 2 * D], rtol=1e-13, atol=0)
        else:
            gr["b"] = gih
            assert torch.allclose(gih, ghh, rtol=1e-13, atol=0)
        gr["c"] = lin.bias.grad
    res: dict[str, Any] = {
        "loss": float(loss.detach()),
        "grads": {k: v.numpy() for k, v in gr.items()},
    }
    if case.cell == "gru":
        res["last"] = last[0].detach().numpy()
    else:
        res["last"] = tuple(a[0].detach().numpy() for a in last)
    res["H"] = out.detach().numpy()
    if case.s0 is not None:
        res["ds0"] = hx.grad[0].numpy() if case.cell == "gru" else tuple(
            a.grad[0].numpy() for a in hx)  # fmt: skip
    if x.requires_grad:
        res["dx"] = x.grad.numpy()
    return res
