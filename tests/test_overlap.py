"""The overlapped step (bptt.overlap): same gradients as the one-block path, on
every backend; on NumPy the worker thread really runs, in order, with one BLAS
thread, and a failure in it reaches the caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import make_problem, rel_err, run_in_mode
from torch_reference import assert_matches_torch

import bptt
from bptt import _parallel, backends, heads, model

NUMPY = backends.get_backend("numpy")

# head, ids, bias, mask, h0, reduction, dropout: each flag on in at least one case
CASES = [
    dict(head="softmax", ids=True, bias=True, mask=False, h0=False, reduction="mean"),
    dict(head="softmax", ids=True, bias=False, mask=True, h0=True, reduction="mean"),
    dict(head="softmax", ids=False, bias=True, mask=True, h0=False, reduction="sum"),
    dict(head="sigmoid", ids=False, bias=True, mask=False, h0=True, reduction="mean"),
    dict(head="sigmoid", ids=True, bias=False, mask=True, h0=True, reduction="sum"),
]


def _id(case: dict) -> str:
    flags = [k for k in ("bias", "mask", "h0") if case[k]]
    return "-".join([case["head"], "ids" if case["ids"] else "dense", case["reduction"], *flags])


@pytest.fixture
def overlap_on() -> Iterator[None]:
    _parallel.set_overlap("on")
    yield
    _parallel.set_overlap(None)


def _run(prob, mode: str, keep=None):
    return run_in_mode(prob, _parallel.set_overlap, mode, keep)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_same_result_as_one_block(be, case: dict) -> None:
    """T=23 in 10 uneven blocks against one block of 23, with dropout, on every backend."""
    dtype = "float64" if be.supports("float64") else "float32"
    tol = 1e-12 if dtype == "float64" else 2e-5
    rng = np.random.default_rng(3)
    prob = make_problem(be, rng, T=23, B=3, M=5, D=7, C=4, dtype=dtype, **case)
    keep = be.asarray(((rng.random((23, 3, 7)) < 0.7) / 0.7).astype(dtype), dtype=dtype)
    loss0, grads0, h0 = _run(prob, "off", keep)
    loss1, grads1, h1 = _run(prob, "on", keep)
    assert type(loss1) is type(loss0) and loss1.dtype == loss0.dtype and loss1.shape == ()
    assert abs(float(be.to_numpy(loss1)) - float(be.to_numpy(loss0))) <= tol * abs(
        float(be.to_numpy(loss0))
    )
    assert list(grads1) == list(prob.params)
    for key in grads0:
        assert grads1[key].dtype == grads0[key].dtype and grads1[key].device == be.device
        assert rel_err(be.to_numpy(grads1[key]), be.to_numpy(grads0[key])) < tol, key
    assert rel_err(be.to_numpy(h1), be.to_numpy(h0)) < tol


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("T", [1, 2, 11, 30])
def test_matches_torch_autograd(case: dict, T: int, overlap_on: None) -> None:
    """float64, against autograd directly, from one block (T=1) to 10 blocks of 3."""
    prob = make_problem(NUMPY, np.random.default_rng(T), T=T, B=4, M=5, D=6, C=3, **case)
    assert len(_parallel.time_blocks(np, T, 4, 6)) == min(T, 10)
    assert_matches_torch(prob)


def test_finite_differences(overlap_on: None) -> None:
    """The overlapped gradient against central differences of the loss, every entry."""
    prob = make_problem(NUMPY, np.random.default_rng(5), T=12, B=2, M=3, D=4, C=3, h0=True)
    _, grads, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **prob.kwargs)
    eps = 1e-6
    for key, value in prob.params.items():
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            losses = []
            for sign in (1, -1):
                p = {k: v.copy() for k, v in prob.params.items()}
                p[key][i] += sign * eps
                losses.append(
                    float(bptt.loss_and_grad(p, prob.inputs, prob.targets, **prob.kwargs)[0])
                )
            numeric[i] = (losses[0] - losses[1]) / (2 * eps)
        assert rel_err(grads[key], numeric) < 1e-8, key


def test_worker_thread_runs_the_products_with_one_blas_thread(
    overlap_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("threadpoolctl", reason="the BLAS limit needs threadpoolctl")
    from threadpoolctl import threadpool_info

    if _parallel.max_threads() < 2:
        pytest.skip("one thread allowed: the blocks run inline")
    seen: list[tuple[str, str, list[int]]] = []
    for name in ("add_output_grads", "add_weight_grads", "recurrence", "reverse_recurrence"):
        real = getattr(model, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
            seen.append((_name, threading.current_thread().name, blas))
            return _real(*args, **kwargs)

        monkeypatch.setattr(model, name, spy)
    prob = make_problem(NUMPY, np.random.default_rng(0), T=20, B=3, M=4, D=5, C=3)
    bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)
    where = {name: {thread for n, thread, _ in seen if n == name} for name, _, _ in seen}
    main = threading.current_thread().name
    assert where["recurrence"] == where["reverse_recurrence"] == {main}
    # the worker runs the blocks' products; this thread takes over those not begun
    # when it needs them (at the turn from forward to backward, and at the end)
    for name in ("add_output_grads", "add_weight_grads"):
        assert [n for n, _, _ in seen].count(name) == 10
        assert any(t.startswith("bptt-overlap") for t in where[name])
        assert where[name] <= {main} | {t for t in where[name] if t.startswith("bptt-overlap")}
    assert all(b == [1] * len(b) for _, _, b in seen)
    after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert after and all(n >= 1 for n in after)


def test_a_failing_task_reaches_the_caller(
    overlap_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    prob = make_problem(NUMPY, np.random.default_rng(0), T=20, B=3, M=4, D=5, C=3)
    calls = []
    real = model.add_weight_grads

    def failing(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 4:
            raise FloatingPointError("block 4 failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "add_weight_grads", failing)
    with pytest.raises(FloatingPointError, match="block 4 failed"):
        bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)
    monkeypatch.setattr(model, "add_weight_grads", real)
    loss, _, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)  # still usable
    assert np.isfinite(float(loss))


def test_policy() -> None:
    """auto: NumPy at mid sizes only; on: min(T, 10) blocks; off: one; bad values refused."""

    def count(xp, T, B, D):
        blocks = _parallel.time_blocks(xp, T, B, D)
        assert [t for r in blocks for t in r] == list(range(T))  # consecutive, covering
        return len(blocks)

    _parallel.set_overlap(None)
    strict = pytest.importorskip("array_api_strict")
    threaded = _parallel.max_threads() > 1 and _parallel._blas() is not None
    assert count(np, 100, 64, 256) == (10 if threaded else 1)  # S2, the main job
    assert count(np, 100, 32, 100) == 1  # S1: hand-overs cost more than they save
    assert count(np, 200, 128, 512) == (10 if threaded else 1)  # S3
    assert count(np, 100, 256, 1024) == 1  # beyond what was measured
    assert count(np, 3, 64, 256) == 1  # blocks of one step
    assert count(strict, 100, 64, 256) == 1  # off NumPy, never by default
    try:
        _parallel.set_overlap("on")
        assert count(strict, 100, 2, 2) == 10 and count(np, 7, 1, 1) == 7
        _parallel.set_overlap("off")
        assert count(np, 100, 64, 256) == 1
    finally:
        _parallel.set_overlap(None)
    with pytest.raises(ValueError, match="overlap mode"):
        _parallel.set_overlap("sometimes")


def test_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPTT_OVERLAP", "on")
    assert len(_parallel.time_blocks(np, 30, 2, 2)) == 10
    monkeypatch.setenv("BPTT_OVERLAP", "off")
    assert len(_parallel.time_blocks(np, 100, 64, 256)) == 1
    monkeypatch.setenv("BPTT_OVERLAP", "yes")
    with pytest.raises(ValueError, match="BPTT_OVERLAP"):
        _parallel.time_blocks(np, 30, 2, 2)


def test_reduce_is_the_one_block_head() -> None:
    """heads.reduce with a (T, B) mask weight equals the float path where all count."""
    rng = np.random.default_rng(0)
    terms = rng.random((4, 3))
    d = rng.random((4, 3, 2))
    w = heads.loss_weights(
        np.ones((4, 3), bool), (4, 3, 2), head="softmax", reduction="mean", dtype=np.float64, xp=np
    )
    s = heads.loss_weights(
        None, (4, 3, 2), head="softmax", reduction="mean", dtype=np.float64, xp=np
    )
    la, da = heads.reduce(terms, d.copy(), w, np)
    lb, db = heads.reduce(terms, d.copy(), s, np)
    np.testing.assert_allclose(la, lb, rtol=1e-15)
    np.testing.assert_allclose(da, db, rtol=1e-15)


def test_result_does_not_depend_on_which_thread_ran_a_block(
    overlap_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow recurrence lets the worker run every output block; slower weight tasks
    make this thread take some over at the end: the bits stay those of a plain run."""
    if _parallel.max_threads() < 2:
        pytest.skip("one thread allowed: the blocks run inline")
    prob = make_problem(NUMPY, np.random.default_rng(2), T=30, B=8, M=7, D=16, C=7, h0=True)
    loss0, grads0, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **prob.kwargs)
    ran: list[tuple[str, str]] = []
    real_serial = _parallel._serial

    def slow_worker(fn, *args):
        ran.append((fn.__name__, threading.current_thread().name))
        if fn.__name__ == "weight_block":
            time.sleep(0.05)
        return real_serial(fn, *args)

    def slowed(real):
        def run(*args, **kwargs):
            time.sleep(0.02)  # a block of the recurrence takes 20 ms, a weight task 50
            return real(*args, **kwargs)

        return run

    monkeypatch.setattr(_parallel, "_serial", slow_worker)
    for name in ("recurrence", "reverse_recurrence"):
        monkeypatch.setattr(model, name, slowed(getattr(model, name)))
    loss1, grads1, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **prob.kwargs)
    names = [name for name, _ in ran]
    assert names.count("output_block") >= 9  # the worker kept up with the forward pass
    assert 1 <= names.count("weight_block") < 10  # and this thread took some over
    assert float(loss1) == float(loss0)
    for key in grads0:
        np.testing.assert_array_equal(grads1[key], grads0[key], err_msg=key)


@pytest.mark.parametrize("n", [1, 5, 12, 40])
def test_one_hot_and_column_sums(be, n: int) -> None:
    """Both ways of building one-hot rows (gathered identity rows for n <= N, the
    comparison above), and sums over rows as a GEMV, against NumPy."""
    ids = np.random.default_rng(n).integers(0, n, 12)
    dtype = "float64" if be.supports("float64") else "float32"
    hot = model.one_hot(be.asarray(ids), n, be.xp.float32, be.xp)
    assert hot.dtype == be.xp.float32 and hot.device == be.device
    np.testing.assert_array_equal(be.to_numpy(hot), np.eye(n, dtype=np.float32)[ids])
    x = np.random.default_rng(0).standard_normal((12, n)).astype(dtype)
    sums = model.column_sums(be.asarray(x, dtype=dtype), be.xp)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(be.to_numpy(sums), x.sum(axis=0), **tol)


def test_an_interrupt_in_the_recurrence_leaves_no_work_behind(
    overlap_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in this thread's part: the worker is left idle, and the next call is exact."""
    prob = make_problem(NUMPY, np.random.default_rng(4), T=30, B=3, M=4, D=5, C=3)
    loss0, grads0, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)
    real = model.reverse_recurrence
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "reverse_recurrence", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)
    if "worker" in _parallel._state:  # the worker is free (what was queued was cancelled)
        assert _parallel._state["worker"].submit(lambda: 1).result(timeout=5) == 1
    monkeypatch.setattr(model, "reverse_recurrence", real)
    loss1, grads1, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)
    assert float(loss1) == float(loss0)
    for key in grads0:
        np.testing.assert_array_equal(grads1[key], grads0[key])
