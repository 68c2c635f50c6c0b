"""The recurrences as ``jax.lax.scan`` (bptt.execution.jax_exec): the same numbers, a program that
does not grow with T, and the choice between scan and unrolled kept explicit.

Under ``jax.jit`` the step (``schedule="auto"``: the scan) equals the eager NumPy step to
1e-12 in float64 and the unrolled jitted step to rounding, for every layer count,
direction and nonlinearity, with h0, a loss mask, dropout and the masks between
layers; ``bptt.vjp``'s pullback (d_inputs, d_h0) likewise. The test that fails if
someone unrolls the loop again counts the equations of the jitted training step's
program at T = 50 and T = 500 (the token ids one-hot the same way at both).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import Backend, jax_x64, load
from train_helpers import small_config, small_corpus

import bptt
from bptt import backends
from bptt.execution import jax_exec, schedules
from bptt.math import model
from bptt.math.scan import python_scan
from bptt.train import Trainer, make_train_step

jax = pytest.importorskip("jax", reason="JAX is not installed (it is optional)")

NUMPY = backends.get_backend("numpy")
T, B, M, D, C = 7, 3, 5, 4, 6
CASES = list(itertools.product((1, 2), (1, 2), ("tanh", "relu")))  # layers, directions, f


@pytest.fixture
def jx():
    with jax_x64(True):
        yield load(Backend.JAX)


def _problem(layers: int, directions: int, *, dense: bool, seed: int = 0) -> dict:
    """Host arrays: params, inputs, targets, h0, a loss mask, dropout and layer masks."""
    rng = np.random.default_rng(seed)
    p = bptt.init_params(M, D, C, num_layers=layers, bidirectional=directions == 2,
                         dtype="float64", seed=seed)  # fmt: skip
    params = {k: np.asarray(v) + 0.2 * rng.standard_normal(v.shape) for k, v in p.items()}
    cells, width = layers * directions, directions * D
    keep = lambda: (rng.random((T, B, width)) > 0.3) / 0.7  # noqa: E731
    return {
        "params": params,
        "inputs": rng.standard_normal((T, B, M)) if dense else rng.integers(0, M, (T, B)),
        "targets": rng.integers(0, C, (T, B)),
        "h0": rng.standard_normal((B, D) if cells == 1 else (cells, B, D)),
        "mask": rng.random((T, B)) > 0.2,
        "dropout_mask": keep(),
        "layer_masks": [keep() for _ in range(layers - 1)] or None,
    }


def _on(be, problem: dict) -> dict:
    def put(a):
        if a is None or isinstance(a, (int, float)):
            return a
        if isinstance(a, dict):
            return {k: put(v) for k, v in a.items()}
        if isinstance(a, list):
            return [put(v) for v in a]
        return be.asarray(a)

    return {k: put(v) for k, v in problem.items()}


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _assert_close(a, b, rtol: float) -> None:
    for x, y in zip(jax.tree_util.tree_leaves(_host(a)), jax.tree_util.tree_leaves(_host(b)),
                    strict=True):  # fmt: skip
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol)


def _loss_and_grad(schedule: str, nonlinearity: str):
    def run(params, inputs, targets, h0, mask, dropout_mask, layer_masks):
        return bptt.loss_and_grad(
            params, inputs, targets, h0=h0, mask=mask, dropout_mask=dropout_mask,
            layer_masks=layer_masks, nonlinearity=nonlinearity, schedule=schedule,
            check_values=False,
        )  # fmt: skip

    return run


@pytest.mark.parametrize(("layers", "directions", "nonlinearity"), CASES)
def test_the_scanned_step_equals_numpy_and_the_unrolled_step(
    jx, layers: int, directions: int, nonlinearity: str
) -> None:
    problem = _problem(layers, directions, dense=layers == 1)
    want = _loss_and_grad(None, nonlinearity)(**problem)  # eager NumPy
    on_jax = _on(jx, problem)
    scanned = jax.jit(_loss_and_grad("auto", nonlinearity))(**on_jax)
    unrolled = jax.jit(_loss_and_grad("unrolled", nonlinearity))(**on_jax)
    _assert_close(scanned, want, 1e-12)
    _assert_close(scanned, unrolled, 1e-13)
    explicit = jax.jit(_loss_and_grad("scan", nonlinearity))(**on_jax)
    _assert_close(explicit, scanned, 0.0)


@pytest.mark.parametrize(("layers", "directions", "nonlinearity"), CASES[::3])
def test_without_h0_the_first_step_is_peeled_under_the_scan(
    jx, layers: int, directions: int, nonlinearity: str
) -> None:
    problem = {**_problem(layers, directions, dense=False, seed=1), "h0": None}
    want = _loss_and_grad(None, nonlinearity)(**problem)
    scanned = jax.jit(_loss_and_grad("auto", nonlinearity))(**_on(jx, problem))
    _assert_close(scanned, want, 1e-12)


@pytest.mark.parametrize(("layers", "directions", "nonlinearity"), CASES)
def test_vjp_under_jit_scans_and_equals_numpy(
    jx, layers: int, directions: int, nonlinearity: str
) -> None:
    """The pullback with d_inputs and d_h0, every cotangent, under ``jax.jit``."""
    problem = _problem(layers, directions, dense=True, seed=2)
    rng = np.random.default_rng(3)
    dlogits, dstates = rng.standard_normal((T, B, C)), rng.standard_normal((T, B, directions * D))

    def run(params, inputs, h0, dropout_mask, layer_masks, dlogits, dstates):
        out, pullback = bptt.vjp(params, inputs, h0=h0, nonlinearity=nonlinearity,
                                 dropout_mask=dropout_mask, layer_masks=layer_masks,
                                 check_values=False)  # fmt: skip
        return tuple(out), tuple(pullback(dlogits, dstates, with_inputs=True, with_h0=True))

    args = {k: problem[k] for k in ("params", "inputs", "h0", "dropout_mask", "layer_masks")}
    args |= {"dlogits": dlogits, "dstates": dstates}
    want = run(**args)
    traced = jax.make_jaxpr(run)(**_on(jx, args))
    assert "scan" in str(traced)
    _assert_close(jax.jit(run)(**_on(jx, args)), want, 1e-12)


def test_eagerly_the_loop_stays_in_python_bit_for_bit(jx) -> None:
    """Concrete arrays: jax_exec.scan is the Python loop (a lax.scan would compile anew
    at every call), so the eager scanned recurrences are the unrolled ones' bits."""
    problem = _on(jx, _problem(2, 2, dense=True))
    scanned = _loss_and_grad("scan", "tanh")(**problem)
    unrolled = _loss_and_grad("unrolled", "tanh")(**problem)
    _assert_close(scanned, unrolled, 0.0)
    W, xu = problem["params"]["W"], problem["dropout_mask"][..., :D]
    assert not jax_exec.is_traced((W, xu))
    assert jax.make_jaxpr(lambda w, x: jax_exec.recurrences.recurrence(w, x, None, jx.xp))(
        W, xu
    ).jaxpr.eqns  # traced: one program, with a scan in it


def test_the_scan_seam_matches_python_scan_in_both_directions(jx) -> None:
    xs = (jx.asarray(np.arange(12.0).reshape(4, 3)),)

    def body(c, x):
        c = c * 0.5 + x[0]
        return c, (c, c * 2)

    for reverse in (False, True):
        want = python_scan(body, jx.xp.zeros(3), xs, jx.xp, reverse=reverse)
        got = jax.jit(lambda x, r=reverse: jax_exec.scan(body, jx.xp.zeros(3), x, jx.xp,
                                                         reverse=r))(xs)  # fmt: skip
        _assert_close(got, want, 0.0)


def _count(jaxpr) -> int:
    """Equations of a program, those of the programs inside it (loop bodies) included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    total += _count(inner)
                elif hasattr(sub, "eqns"):
                    total += _count(sub)
    return total


def _train_step_size(be, seq_len: int, schedule: str | None, layers: int = 1) -> int:
    config = small_config(seq_len=seq_len, dropout=0.1, layers=layers)
    trainer = Trainer.create(small_corpus(), config, backend=be, compile="none")
    step = make_train_step(trainer.optimizer, trainer.state.layout, dropout=0.1,
                           schedule=schedule, model=trainer.model)  # fmt: skip
    x, y = trainer.feed.chunk(0)
    return _count(jax.make_jaxpr(step)(trainer.state.carry, x, y).jaxpr)


@pytest.mark.parametrize("layers", [1, 2])
def test_the_jitted_step_does_not_grow_with_T(jx, layers: int) -> None:
    """The program of the training step at T = 50 and T = 500: as many equations (one loop
    body per recurrence); unrolled, it grows with T (so this test can fail)."""
    assert _train_step_size(jx, 50, None, layers) == _train_step_size(jx, 500, None, layers)
    assert (
        _train_step_size(jx, 50, "unrolled", layers)
        > _train_step_size(jx, 5, "unrolled", layers) + 100
    )


def test_scan_is_refused_where_there_is_none(jx) -> None:
    problem = _problem(1, 1, dense=False)
    for be in (NUMPY, load(Backend.TORCH)):
        with pytest.raises(ValueError, match=r"^schedule: 'scan' runs each recurrence"):
            _loss_and_grad("scan", "tanh")(**_on(be, problem))
        xp = be.xp
        with pytest.raises(ValueError, match=r"^schedule: 'scan'"):
            schedules.execution(xp, B, D, "scan")
        with pytest.raises(ValueError, match=r"^schedule: 'scan'"):
            bptt.forward(_on(be, problem)["params"], _on(be, problem)["inputs"], schedule="scan")


def test_scan_from_the_environment_is_refused_naming_it(jx, monkeypatch) -> None:
    monkeypatch.setenv(schedules.ENV_VAR, "scan")
    with pytest.raises(ValueError, match=rf"^{schedules.ENV_VAR}: 'scan' runs"):
        schedules.resolve(None, np, T, B, D, 8)
    assert schedules.resolve(None, jx.xp, T, B, D, 8)[0] == "scan"


def test_the_schedule_names_the_loop(jx) -> None:
    assert schedules.resolve(None, jx.xp, T, B, D, 8)[0] == "scan"
    assert schedules.resolve("single", jx.xp, T, B, D, 8)[0] == "scan"
    assert schedules.resolve("unrolled", jx.xp, T, B, D, 8)[0] == "unrolled"
    assert schedules.resolve("unrolled", np, T, B, D, 8)[0] == "unrolled"
    assert schedules.execution(jx.xp, B, D)[0] is jax_exec.recurrences
    assert schedules.execution(jx.xp, B, D, "unrolled")[0] is model
    assert schedules.forward_recurrences(jx.xp) is jax_exec.recurrences
    assert schedules.forward_recurrences(np) is model


def test_validation_on_jax_is_jitted_and_equals_numpy(jx) -> None:
    config = small_config()
    runs = [Trainer.create(small_corpus(), config, backend=be) for be in (NUMPY, jx)]
    numpy_bpc, jax_bpc = (t.validate() for t in runs)
    assert abs(numpy_bpc - jax_bpc) < 1e-12 * numpy_bpc
