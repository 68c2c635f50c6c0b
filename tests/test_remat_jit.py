"""remat=k and "sqrt" on JAX as two scans over segments (bptt/math/remat_scan.py): the
gradients of full BPTT (float64, 1e-12) eagerly and under jax.jit, for every cell,
stacks, both directions, masks, dropout and h0, and the memory saving XLA keeps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import rel_err

import bptt
from bptt.math.cells import CELLS

jax = pytest.importorskip("jax")
jnp = jax.numpy

TOL = 1e-12


@pytest.fixture(autouse=True)
def _x64() -> Any:
    from conftest import jax_x64

    with jax_x64(True):
        yield


def _problem(cell: str, layers: int, bidirectional: bool, T: int = 10, B: int = 3,
             M: int = 4, D: int = 5, C: int = 3) -> tuple[Any, ...]:  # fmt: skip
    rng = np.random.default_rng(layers)
    model = bptt.RNN(M, D, C, cell=cell, layers=layers, bidirectional=bidirectional)
    host = model.init(seed=1, dtype="float64")
    params = {k: jnp.asarray(v + rng.uniform(-0.3, 0.3, v.shape) if v.ndim == 1 else v)
              for k, v in host.items()}  # fmt: skip  # nonzero biases
    width = D * (2 if bidirectional else 1)
    x, y = jnp.asarray(rng.standard_normal((T, B, M))), jnp.asarray(rng.integers(0, C, (T, B)))
    kw: dict[str, Any] = {
        "mask": jnp.asarray(rng.random((T, B)) < 0.7),
        "dropout_mask": jnp.asarray((rng.random((T, B, width)) < 0.6) / 0.6),
    }
    if layers > 1:
        kw["layer_masks"] = [jnp.asarray((rng.random((T, B, width)) < 0.6) / 0.6)
                             for _ in range(layers - 1)]  # fmt: skip
    h0 = jnp.asarray(rng.standard_normal(model.state_shape(B)) * 0.5)
    kw["h0"] = (h0, -h0) if cell == "lstm" else h0
    return model, params, x, y, kw


def _close(got: Any, full: Any) -> None:
    assert abs(float(got[0]) - float(full[0])) < TOL
    assert sorted(got[1]) == sorted(full[1])  # jit returns a dict sorted by key
    for key in full[1]:
        assert rel_err(np.asarray(got[1][key]), np.asarray(full[1][key])) < TOL, key
    for a, b in zip(np.atleast_1d(full[2]), np.atleast_1d(got[2]), strict=True):
        assert rel_err(np.asarray(b), np.asarray(a)) < TOL


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("layers", [1, 2])
def test_scanned_remat_equals_full_bptt(cell: str, layers: int) -> None:
    """T = 10, k = 3: segment 0, two scanned segments and a tail of 1; under jit."""
    model, params, x, y, kw = _problem(cell, layers, False)
    full = model.loss_and_grad(params, x, y, **kw)
    jitted = jax.jit(lambda p: model.loss_and_grad(p, x, y, check_values=False, remat=3, **kw))
    _close(jitted(params), full)


def test_scanned_remat_every_split_of_t() -> None:
    """T = 10: k = 5 (no tail), sqrt (k = 4, a tail of 2), k = 10 (one segment), k = 2
    eagerly too (the same loops in Python)."""
    model, params, x, y, kw = _problem("lstm", 1, False)
    full = model.loss_and_grad(params, x, y, **kw)
    for setting in (5, "sqrt", 10):
        jitted = jax.jit(lambda p, s=setting: model.loss_and_grad(
            p, x, y, check_values=False, remat=s, **kw))  # fmt: skip
        _close(jitted(params), full)
    _close(model.loss_and_grad(params, x, y, remat=2, **kw), full)


@pytest.mark.parametrize("cell", ["lstm"])
def test_scanned_remat_bidirectional_under_jit(cell: str) -> None:
    model, params, x, y, kw = _problem(cell, 2, True)
    full = model.loss_and_grad(params, x, y, **kw)
    step = jax.jit(lambda p: model.loss_and_grad(p, x, y, check_values=False, remat=3, **kw))
    _close(step(params), full)


def test_bidirectional_remat_program_does_not_grow_with_t() -> None:
    """A bidirectional stack's forward pass and head walk the segments as one loop too
    (bptt/math/remat_layerwise.py): the traced program has as many equations at T = 20
    as at T = 60 (k = 5: 4 and 12 segments; unrolled it had 1,392 and 2,768)."""
    model = bptt.RNN(4, 5, 3, cell="lstm", layers=2, bidirectional=True)
    params = {k: jnp.asarray(v) for k, v in model.init(seed=0, dtype="float64").items()}
    rng = np.random.default_rng(0)

    def equations(T: int) -> int:
        x, y = jnp.asarray(rng.integers(0, 4, (T, 2))), jnp.asarray(rng.integers(0, 3, (T, 2)))
        step = lambda p: model.loss_and_grad(p, x, y, check_values=False, remat=5)  # noqa: E731
        return len(jax.make_jaxpr(step)(params).eqns)

    assert equations(20) == equations(60)


def _check_vjp_against_full(bidirectional: bool, remat: Any, T: int, eager: bool) -> None:
    """A two-layer GRU's pullback under ``remat`` (jitted, and eagerly if ``eager``)
    against full BPTT's: the parameters', the inputs' and h0's cotangents."""
    model, params, x, _, kw = _problem("gru", 2, bidirectional, T=T)
    kw.pop("mask")
    out, pull = model.vjp(params, x, **kw)
    rng = np.random.default_rng(9)
    dlogits = jnp.asarray(rng.standard_normal(out.logits.shape))
    dstates = jnp.asarray(rng.standard_normal(out.states.shape))
    ref = pull(dlogits, dstates, with_inputs=True, with_h0=True)

    def cotangents(p: Any) -> Any:
        _, pull_r = model.vjp(p, x, remat=remat, check_values=False, **kw)
        got = pull_r(dlogits, dstates, with_inputs=True, with_h0=True)
        return got.params, got.inputs, got.h0

    runs = [jax.jit(cotangents)(params), *([cotangents(params)] if eager else [])]
    for grads, d_inputs, d_h0 in runs:
        for key in ref.params:
            assert rel_err(np.asarray(grads[key]), np.asarray(ref.params[key])) < TOL, key
        assert rel_err(np.asarray(d_inputs), np.asarray(ref.inputs)) < TOL
        assert rel_err(np.asarray(d_h0), np.asarray(ref.h0)) < TOL


@pytest.mark.parametrize("remat", [4, "budget:14"])
def test_bidirectional_vjp_under_jit_equals_full(remat: Any) -> None:
    """The layerwise plan with a head that gives no loss (a pullback's: the loop's
    carry starts from None), scanned (T = 11: k = 4, and budget:14's uniform k = 3),
    against full BPTT."""
    _check_vjp_against_full(True, remat, T=11, eager=False)


def test_scanned_vjp_equals_full() -> None:
    _check_vjp_against_full(False, 4, T=10, eager=True)


def test_jitted_remat_holds_less_scratch_than_full_bptt() -> None:
    """XLA's temp bytes of the jitted step: a fraction of full BPTT's under remat=k
    (the loops keep one segment's buffers), as eq. (B27) says; the unrolled plan did
    not drop (benchmarks/NOTES.md)."""
    model = bptt.RNN(8, 32, 8)
    params = {k: jnp.asarray(v) for k, v in model.init(seed=0, dtype="float32").items()}
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.integers(0, 8, (400, 4))), jnp.asarray(rng.integers(0, 8, (400, 4)))

    def temp(setting: Any) -> int:
        step = jax.jit(lambda p: model.loss_and_grad(p, x, y, check_values=False,
                                                     remat=setting))  # fmt: skip
        return step.lower(params).compile().memory_analysis().temp_size_in_bytes

    full = temp(None)
    assert temp("sqrt") < 0.3 * full and temp(10) < 0.3 * full
    # a budget: the uniform k that fits it, so the scratch follows m (the dynamic
    # program's unrolled plan held 79% of full BPTT's at budget:100, benchmarks/NOTES.md)
    small, large = temp("budget:100"), temp("budget:400")
    assert small < 0.2 * full and small < large < 0.5 * full


def test_budget_under_jit_equals_full_bptt_scanned_or_not() -> None:
    """T = 10: budget:12 fits every 2nd state (scanned); budget:6 fits no uniform k, so
    it keeps the dynamic program's plan (unrolled). Both are full BPTT's gradients."""
    from bptt.math import remat

    assert remat.uniform_k(10, 12) == 2 and remat.uniform_k(10, 6) is None
    model, params, x, y, kw = _problem("lstm", 2, False)
    full = model.loss_and_grad(params, x, y, **kw)
    for budget in ("budget:12", "budget:6"):
        step = jax.jit(lambda p, b=budget: model.loss_and_grad(
            p, x, y, check_values=False, remat=b, **kw))  # fmt: skip
        _close(step(params), full)
