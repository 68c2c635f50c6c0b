"""The GRU and LSTM cells (bptt.math.gru, bptt.math.lstm) against torch, finite differences, every
backend, jax.jit with lax.scan, and the kernel budget per step they state."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gated_reference import CELLS, Case, make_case, ours, reference, run_cell
from helpers import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from bptt.math import gru, heads, lstm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from proxy import Array, Namespace

VARIANTS = {
    "ids": {},
    "ids-no-bias": {"bias": False},
    "dense-h0": {"ids": False, "h0": True},
    "dense-no-bias-h0": {"ids": False, "bias": False, "h0": True},
    "mse-mask-h0": {"head": "mse", "mask": True, "h0": True},
    "dense-mask": {"ids": False, "mask": True},
}


def host(x: Any) -> Any:
    """A state (array or the LSTM's pair) as one host array."""
    return np.stack([np.asarray(a) for a in x]) if isinstance(x, tuple) else np.asarray(x)


def assert_same(mine: dict[str, Any], ref: dict[str, Any], tol: float = 1e-12) -> None:
    """Loss, every gradient, the states, the last state, d_inputs and d_s0 to ``tol``."""
    assert abs(float(mine["loss"]) - ref["loss"]) <= tol * abs(ref["loss"])
    assert set(mine["grads"]) == set(ref["grads"])
    for key, value in ref["grads"].items():
        assert rel_err(mine["grads"][key], value) < tol, key
    assert rel_err(np.asarray(mine["H"])[1:], ref["H"]) < tol
    assert rel_err(host(mine["last"]), host(ref["last"])) < tol
    for key in ("ds0", "dx"):
        if key in ref:
            assert rel_err(host(mine[key]), host(ref[key])) < tol, key


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_one_layer_matches_torch_autograd(cell: str, variant: str) -> None:
    case = make_case(cell, np.random.default_rng(len(variant)), **VARIANTS[variant])
    for reduction in ("mean", "sum"):
        assert_same(ours(case, np, np.asarray, reduction=reduction), reference(case, reduction))


@settings(max_examples=12, deadline=None)
@given(
    cell=st.sampled_from(["gru", "lstm"]),
    T=st.integers(1, 6), B=st.integers(1, 4), M=st.integers(1, 5), D=st.integers(1, 6),
    C=st.integers(2, 4), ids=st.booleans(), h0=st.booleans(), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_shapes_match_torch(cell: str, T: int, B: int, M: int, D: int, C: int, ids: bool,
                            h0: bool, seed: int) -> None:  # fmt: skip
    case = make_case(cell, np.random.default_rng(seed), T=T, B=B, M=M, D=D, C=C, ids=ids, h0=h0)
    assert_same(ours(case, np, np.asarray), reference(case))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_torch_conversion_round_trip_and_same_function(cell: str) -> None:
    """to_torch_cell gives torch weights computing our function; from_torch_cell inverts it."""
    mod, rng, D, M, B, T = CELLS[cell], np.random.default_rng(3), 4, 3, 2, 5
    p = {k: rng.uniform(-0.7, 0.7, s) for k, s in mod.param_shapes(M, D).items()}
    back = mod.from_torch_cell(*mod.to_torch_cell(p))
    assert set(back) == set(p)
    for key in p:
        np.testing.assert_array_equal(back[key], p[key])
    x = rng.standard_normal((T, B, M))
    H, _, _ = mod.recurrence(p, np.asarray(x @ p["U"].T + p["b"]), None, np)
    net = (torch.nn.GRU if cell == "gru" else torch.nn.LSTM)(M, D).double()
    with torch.no_grad():
        for name, w in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                           mod.to_torch_cell(p), strict=True):  # fmt: skip
            getattr(net, f"{name}_l0").copy_(torch.as_tensor(w))
        out, _ = net(torch.as_tensor(x))
    assert rel_err(H[1:], out.numpy()) < 1e-13
    shapes = mod.param_shapes(M, D, bias=False)
    assert set(shapes) == {"U", "W"} and shapes["W"] == (mod.GATES * D, D)


def _loss(case: Case, params: dict[str, np.ndarray], inputs: np.ndarray, s0: Any) -> float:
    """Our loss at perturbed parameters, inputs or s0 (NumPy float64)."""
    T, B = case.inputs.shape[:2]
    w = heads.loss_weights(case.mask, (T, B, case.C), head=case.head, reduction="mean",
                           dtype=np.float64, xp=np)  # fmt: skip
    xu_free = run_cell(CELLS[case.cell], params, inputs, case.targets, s0, case.head, w, np)
    return float(xu_free["loss"])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_every_entry_matches_central_differences(cell: str) -> None:
    """Every parameter entry, every dense input and every h0 (and c0) entry, float64."""
    case = make_case(cell, np.random.default_rng(7), T=3, B=2, M=3, D=3, C=2, ids=False,
                     h0=True, mask=True)  # fmt: skip
    got = ours(case, np, np.asarray)
    params, x = case.params, case.inputs
    s0 = case.s0 if cell == "gru" else np.stack(case.s0)
    as_s0 = (lambda s: s) if cell == "gru" else (lambda s: (s[0], s[1]))
    targets = {**{k: (v, got["grads"][k]) for k, v in params.items()},
               "x": (x, got["dx"]), "s0": (s0, host(got["ds0"]))}  # fmt: skip
    eps = 1e-6
    for name, (value, analytic) in targets.items():
        numeric = np.zeros(value.shape)
        for index in np.ndindex(value.shape):
            f = []
            for step in (eps, -eps):
                moved = value.copy()
                moved[index] += step
                p = {**params, name: moved} if name in params else params
                f.append(_loss(case, p, moved if name == "x" else x,
                               as_s0(moved if name == "s0" else s0)))  # fmt: skip
            numeric[index] = (f[0] - f[1]) / (2 * eps)
        assert rel_err(analytic, numeric) < 1e-8, name


def _backend_case(cell: str) -> Case:
    return make_case(cell, np.random.default_rng(11), T=4, B=3, M=5, D=4, C=3, ids=False,
                     h0=True, mask=True)  # fmt: skip


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("ids", [True, False])
def test_every_backend_matches_numpy(be: Any, cell: str, ids: bool) -> None:
    case = make_case(cell, np.random.default_rng(11), T=4, B=3, M=5, D=4, C=3, ids=ids,
                     h0=True, mask=True)  # fmt: skip
    want = ours(case, np, np.asarray)
    dtype = "float64" if be.supports("float64") else "float32"
    tol = 1e-12 if dtype == "float64" else 2e-5

    def asarray(a: Any) -> Any:
        a = np.asarray(a)
        if a.dtype.kind == "f":
            return be.asarray(a, dtype=dtype)
        return be.asarray(a, dtype=be.integer) if a.dtype.kind == "i" else be.asarray(a)

    with be.activate():
        got = ours(case, be.xp, asarray)
    assert got["H"].dtype == getattr(be.xp, dtype)
    assert abs(float(be.to_numpy(got["loss"])) - float(want["loss"])) <= tol * abs(want["loss"])
    for key, value in want["grads"].items():
        assert rel_err(be.to_numpy(got["grads"][key]), value) < tol, key
    pairs = [("H", "H"), ("last", "last"), ("ds0", "ds0")] + ([] if ids else [("dx", "dx")])
    for key, _ in pairs:
        mine = got[key]
        mine = tuple(be.to_numpy(a) for a in mine) if isinstance(mine, tuple) else be.to_numpy(mine)
        assert rel_err(host(mine), host(want[key])) < tol, key


def _lax_scan(body: Any, carry: Any, xs: Any, xp: Any, reverse: bool = False,
              length: Any = None) -> Any:  # fmt: skip
    import jax

    return jax.lax.scan(body, carry, xs, reverse=reverse, length=length)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_jax_jit_with_lax_scan_equals_eager(cell: str) -> None:
    jax = pytest.importorskip("jax")
    from conftest import jax_x64

    case = _backend_case(cell)
    with jax_x64(True):
        import jax.numpy as jnp

        def asarray(a: Any) -> Any:
            return jnp.asarray(a)

        eager = ours(case, jnp, asarray)
        leaves = {k: jnp.asarray(v) for k, v in case.params.items()}

        @jax.jit
        def traced(p: dict[str, Any], x: Any, s0: Any) -> Any:
            T, B = x.shape[:2]
            w = heads.loss_weights(jnp.asarray(case.mask), (T, B, case.C), head=case.head,
                                   reduction="mean", dtype=x.dtype, xp=jnp)  # fmt: skip
            out = run_cell(CELLS[cell], p, x, jnp.asarray(case.targets), s0, case.head, w,
                           jnp, _lax_scan)  # fmt: skip
            return out["loss"], out["grads"], out["ds0"], out["dx"], out["last"]

        s0 = jnp.asarray(case.s0) if cell == "gru" else tuple(jnp.asarray(a) for a in case.s0)
        loss, grads, ds0, dx, last = traced(leaves, jnp.asarray(case.inputs), s0)
        assert rel_err(loss, eager["loss"]) < 1e-13
        for key in grads:
            assert rel_err(grads[key], eager["grads"][key]) < 1e-13, key
        assert rel_err(host(ds0), host(eager["ds0"])) < 1e-13
        assert rel_err(dx, eager["dx"]) < 1e-13
        assert rel_err(host(last), host(eager["last"])) < 1e-13


def _counts(cell: Any, T: int, bias: bool) -> tuple[int, int, int]:
    """Kernels of the forward and of the backward recurrence on the counting proxy
    (array_api_strict device1: a host read raises), and its host transfers; float32 in,
    nothing float64 made."""
    from bptt import backends

    be = backends.get_backend("array_api_strict", "device1")
    ns = Namespace(be.xp)
    rng = np.random.default_rng(0)
    B, M, D = 2, 3, 4
    p = {k: Array(be.asarray(rng.uniform(-0.5, 0.5, s), dtype="float32"), ns)
         for k, s in cell.param_shapes(M, D, bias=bias).items()}  # fmt: skip
    xu = Array(be.asarray(rng.standard_normal((T, B, cell.GATES * D)), dtype="float32"), ns)
    dS = Array(be.asarray(rng.standard_normal((T, B, D)), dtype="float32"), ns)
    ns.clear()
    H, aux, _ = cell.recurrence(p, xu, None, ns)
    forward = ns.kernels()
    ns.clear()
    cell.reverse_recurrence(p, H, aux, dS, ns)
    assert ns.dtypes == {"float32"}, ns.dtypes
    return forward, ns.kernels(), ns.transfers


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", [gru, lstm], ids=["gru", "lstm"])
def test_kernels_per_step_are_the_stated_budget(cell: Any, bias: bool) -> None:
    """Exactly linear in T with the slope the module states; no host read, no transfer."""
    counts = {T: _counts(cell, T, bias) for T in (2, 3, 6)}
    forward = cell.KERNELS_PER_STEP["forward" if bias else "forward_no_bias"]
    for T, (fwd, bwd, moved) in counts.items():
        assert fwd - counts[2][0] == forward * (T - 2), counts
        assert bwd - counts[2][1] == cell.KERNELS_PER_STEP["backward"] * (T - 2), counts
        assert moved == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("variant", ["ids", "dense-no-bias-h0", "mse-mask-h0"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_numpy_fast_path_has_the_same_bits(cell: str, variant: str, dtype: Any) -> None:
    """bptt.execution.numpy_exec.gated: the same results to the bit as the generic cell on NumPy."""
    from bptt.execution.numpy_exec import gated

    mod = CELLS[cell]
    fast = {"gru": (gated.gru_recurrence, gated.gru_reverse_recurrence),
            "lstm": (gated.lstm_recurrence, gated.lstm_reverse_recurrence)}[cell]  # fmt: skip
    for T in (1, 4):
        case = make_case(cell, np.random.default_rng(T), T=T, dtype=dtype, **VARIANTS[variant])
        p = case.params
        xu = np.random.default_rng(0).standard_normal((T, 3, p["W"].shape[0])).astype(dtype)
        dS = np.random.default_rng(1).standard_normal((T, 3, p["W"].shape[1])).astype(dtype)
        H, aux, last = mod.recurrence(p, xu, case.s0, np)
        H2, aux2, last2 = fast[0](p, xu, case.s0, np)
        for x, y in zip((H, *aux, *np.atleast_1d(host(last))), (H2, *aux2,
                        *np.atleast_1d(host(last2))), strict=True):  # fmt: skip
            assert x.dtype == y.dtype == dtype and np.array_equal(x, y)
        back = mod.reverse_recurrence(p, H, aux, dS, np)
        for factors in ("before", "per-step", "auto"):
            back2 = fast[1](p, H, aux, dS, np, factors=factors)
            for x, y in zip(back[:2], back2[:2], strict=True):
                assert np.array_equal(x, y), factors
            assert np.array_equal(host(back[2]), host(back2[2])), factors


@pytest.mark.parametrize("clock", ["cpu", "wall"])
def test_the_benchmark_prints_a_row_per_cell(clock: str) -> None:
    """benchmarks/gated_step.py at a tiny size: one table row per cell, three times, ratios."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gated_step.py"
    out = subprocess.run(
        [sys.executable, str(script), "--sizes", "2x3x4x5x3", "--reps", "2", "--clock", clock,
         "--min-block", "0.01"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| 2x3x4x5x3")]
    assert [r.split("|")[2].strip() for r in rows] == ["gru", "lstm"]
    for row in rows:
        cells = [v.strip() for v in row.strip("|").split("|")]
        assert cells[5] in ("single", "overlap", "split")  # the library's schedule
        numbers = [float(v) for v in cells[2:5] + cells[6:]]
        assert len(numbers) == 7 and min(numbers) > 0
