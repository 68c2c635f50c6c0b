"""Inputs the standard allows are accepted; the rest refused with one named error.

Tables: ids of every integer dtype each backend has, through every public entry
(cast once, at entry: the same numbers as int64 ids); every container ``from_torch``
may be given (torch tensors, NumPy or other arrays, lists) and those it must refuse;
devices a backend lists but cannot compute on, refused before any run directory.
"""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import SMALL_TEXT

import bptt
from bptt import backends, cli
from bptt.api.interop import from_torch, to_torch
from bptt.evaluation.diagnostics import gradient_flow
from bptt.text.sample import sample_ids

M, D, C, T, B = 5, 4, 5, 6, 2

# Every entry that takes ids: (name, call(params, x, y) -> arrays to compare).
ENTRIES = {
    "forward": lambda p, x, y: bptt.forward(p, x),
    "loss_and_grad": lambda p, x, y: (bptt.loss_and_grad(p, x, y)[0],
                                      *bptt.loss_and_grad(p, x, y)[1].values()),
    "vjp": lambda p, x, y: bptt.vjp(p, x)[0][:2],
    "gradcheck": lambda p, x, y: (np.float64(bptt.gradcheck(p, x, y, max_entries=2) < 1e-6),),
    "gradient_flow": lambda p, x, y: (gradient_flow(bptt.RNN.from_params(p), p, x, y).norms,),
    "sample_ids": lambda p, x, y: (sample_ids(bptt.RNN.from_params(p), p, x[:, 0], length=3,
                                              seed=0),),
}  # fmt: skip


def _host(be, a) -> np.ndarray:
    return np.asarray(a) if isinstance(a, (np.ndarray, np.generic, float)) else be.to_numpy(a)


def _integer_dtypes(be) -> list:
    """Every integer dtype the backend has: the namespace's list, and torch's unsigned
    types of limited support (uint16, uint32, uint64), which it lists nowhere."""
    kinds = be.xp.__array_namespace_info__().dtypes(device=be.device, kind="integral")
    found = list(kinds.values())
    if be.name == "torch":
        import torch

        found += [getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)]
    return found


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_ids_of_every_integer_dtype_give_the_int64_numbers(be, entry: str) -> None:
    dtype = "float64" if be.supports("float64") else "float32"
    if entry == "gradcheck" and dtype != "float64":
        pytest.skip("gradcheck needs float64")
    if be.name == "jax" and entry not in ("forward", "loss_and_grad"):
        pytest.skip("JAX took every integer dtype before; its other entries run slow eagerly")
    params = bptt.init_params(M, D, C, dtype=dtype, seed=3, backend=be.name, device=be.device)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, M, (T, B)), rng.integers(0, C, (T, B))
    want = [_host(be, a) for a in ENTRIES[entry](params, be.asarray(x), be.asarray(y))]
    dtypes = _integer_dtypes(be)
    assert len(dtypes) >= 4, dtypes
    for int_dtype in dtypes:
        xi = be.xp.asarray(be.asarray(x), dtype=int_dtype, copy=True)
        yi = be.xp.asarray(be.asarray(y), dtype=int_dtype, copy=True)
        got = [_host(be, a) for a in ENTRIES[entry](params, xi, yi)]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w, err_msg=f"{entry} with {int_dtype} ids")


@pytest.mark.parametrize(("ids", "error", "message"), [
    (np.full((T, B), 1.0), TypeError, "inputs: (T, B) inputs are token ids and need an integer"),
    (np.ones((T, B), bool), TypeError, "inputs: (T, B) inputs are token ids and need an integer"),
    (np.full((T, B), 7, np.uint8), ValueError, "inputs: token ids must lie in [0, 5)"),
    (np.full((T, B), -1, np.int8), ValueError, "inputs: token ids must lie in [0, 5)"),
    ([[1, 2]] * T, TypeError, "inputs"),
], ids=["float", "bool", "uint8 too large", "int8 negative", "a list"])  # fmt: skip
def test_ids_that_mean_nothing_are_refused_by_name(ids, error, message) -> None:
    params = bptt.init_params(M, D, C, dtype="float64", seed=3)
    with pytest.raises(error) as info:
        bptt.loss_and_grad(params, ids, np.zeros((T, B), np.int64))
    assert message in str(info.value), info.value


# ---- from_torch: every container of a state dict -----------------------------------------


def _containers():
    torch = pytest.importorskip("torch")
    rnn = torch.nn.RNN(M, D, num_layers=2, dtype=torch.float64)
    linear = torch.nn.Linear(D, C, dtype=torch.float64)
    return rnn, linear, rnn.state_dict(), linear.state_dict()


def _convert(kind: str, state: dict):
    if kind == "numpy":
        return {k: v.numpy() for k, v in state.items()}
    if kind == "list":
        return {k: v.tolist() for k, v in state.items()}
    if kind == "array_api_strict":
        import array_api_strict as xp

        return {k: xp.asarray(v.numpy()) for k, v in state.items()}
    if kind == "float16 tensor":
        return {k: v.half() for k, v in state.items()}
    return state


@pytest.mark.parametrize("kind", ["modules", "tensors", "numpy", "list", "array_api_strict",
                                  "float16 tensor"])  # fmt: skip
def test_from_torch_takes_every_container_of_numbers(kind: str) -> None:
    rnn, linear, r, lin = _containers()
    model, want = from_torch(rnn, linear)
    same, got = from_torch(rnn, linear) if kind == "modules" else from_torch(
        _convert(kind, r), _convert(kind, lin))  # fmt: skip
    assert same == model and list(got) == list(want)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=0, atol=2e-3 if "16" in kind else 0)


def _edit(which: str, key: str, value):
    def make(r, lin):
        (r if which == "rnn" else lin)[key] = value(r, lin)
        return r, lin

    return make


FROM_TORCH_REFUSED = [
    ("a string entry", _edit("rnn", "weight_hh_l0", lambda r, lin: "zeros"), TypeError,
     "rnn['weight_hh_l0']: expected a tensor, an array or a list of numbers; got str"),
    ("a ragged list", _edit("linear", "weight", lambda r, lin: [[1.0, 2.0], [3.0]]), ValueError,
     "linear['weight']: a list that is not a rectangular array of numbers"),
    ("a meta tensor", _edit("linear", "bias", lambda r, lin: lin["bias"].to("meta")), ValueError,
     "linear['bias']: a tensor on torch's 'meta' device holds no values"),
    ("an extra Linear key", _edit("linear", "scale", lambda r, lin: lin["bias"]), ValueError,
     "of which ['scale'] are unexpected"),
    ("an extra RNN key", _edit("rnn", "scale", lambda r, lin: lin["bias"]), ValueError,
     "rnn: keys ['scale'] are missing or unexpected"),
    ("complex numbers", _edit("linear", "bias", lambda r, lin: lin["bias"] * 1j), TypeError,
     "linear['bias']: expected real numbers; got dtype complex128"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "error", "message"), [c[1:] for c in FROM_TORCH_REFUSED],
                         ids=[c[0] for c in FROM_TORCH_REFUSED])  # fmt: skip
def test_from_torch_refuses_what_means_nothing_by_name(edit, error, message) -> None:
    _, _, r, lin = _containers()
    r, lin = edit(dict(r), dict(lin))
    with pytest.raises(error) as info:
        from_torch(r, lin)
    assert message in str(info.value), info.value


@pytest.mark.parametrize("drop", ["W", "W_l1", "U_l1", "V", "W_l0_reverse"])
def test_to_torch_names_a_missing_key_as_missing(drop: str) -> None:
    model = bptt.RNN(M, D, C, layers=3, bidirectional=True)
    params = model.init()
    params.pop(drop)
    with pytest.raises(ValueError) as info:
        to_torch(model, params)
    assert str(info.value).startswith(f"params: missing key(s) ['{drop}']"), info.value


# ---- devices a backend lists but cannot compute on -----------------------------------------

DEVICES = [("torch", "meta"), ("torch", "mps"), ("torch", "xpu")]


@pytest.mark.parametrize(("name", "device"), DEVICES, ids=[f"{n}:{d}" for n, d in DEVICES])
def test_a_device_that_cannot_compute_is_one_line_before_any_run(name, device, tmp_path,
                                                                capsys) -> None:  # fmt: skip
    status = {s.name: s for s in backends.list_backends()}[name]
    if not status.usable:
        pytest.skip(status.reason)
    with pytest.raises(backends.BackendError, match="cannot compute on") as info:
        backends.get_backend(name, device)
    assert "is not supported" not in str(info.value) and "\n" not in str(info.value)
    text = tmp_path / "text.txt"
    text.write_text(SMALL_TEXT, encoding="utf-8")
    run = tmp_path / "run"
    commands = (
        ["train", "--text", str(text), "--steps", "2", "--checkpoint-dir", str(run)],
        ["train", "--text", str(text), "--steps", "2", "--dtype", "float32",
         "--checkpoint-dir", str(run)],
        ["gradcheck"],
        ["diagnose", "--init"],
    )  # fmt: skip
    for argv in commands:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, "--backend", name, "--device", device])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, err
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and "cannot compute on" in lines[0], err
        assert not run.exists()


def test_dtype_advice_never_names_the_refused_dtype() -> None:
    from bptt.backends._dtypes import refusal

    for dtype in ("float32", "float64", "int64"):
        message = refusal("torch", "mps", dtype, "--dtype")
        assert f"use '{dtype}'" not in message, message
