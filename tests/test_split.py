"""The batch-split step (bptt.split): same gradients as the one-block path, on every
backend; on NumPy the parts really run on two threads with one BLAS thread each,
and the bits never depend on which thread ran which part."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import make_problem, rel_err, run_in_mode
from test_overlap import CASES, _id
from torch_reference import assert_matches_torch

import bptt
from bptt import _parallel, backends, model

NUMPY = backends.get_backend("numpy")


@pytest.fixture
def split_on() -> Iterator[None]:
    _parallel.set_split("on")
    yield
    _parallel.set_split(None)


def _run(prob, mode: str, keep=None):
    return run_in_mode(prob, _parallel.set_split, mode, keep)


def _threaded() -> bool:
    return _parallel.max_threads() > 1


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_same_result_as_one_block(be, case: dict) -> None:
    """B=5 in uneven parts against one block of 5, with dropout, on every backend; a
    masked mean weighs each step by the whole batch's count, not by its part's."""
    dtype = "float64" if be.supports("float64") else "float32"
    tol = 1e-12 if dtype == "float64" else 2e-5
    rng = np.random.default_rng(3)
    prob = make_problem(be, rng, T=9, B=5, M=5, D=7, C=4, dtype=dtype, **case)
    keep = be.asarray(((rng.random((9, 5, 7)) < 0.7) / 0.7).astype(dtype), dtype=dtype)
    _parallel.set_split("on")
    try:
        assert len(_parallel.batch_parts(be.xp, 5, 7)) >= 2
    finally:
        _parallel.set_split(None)
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
    assert h1.shape == h0.shape and h1.device == be.device
    assert rel_err(be.to_numpy(h1), be.to_numpy(h0)) < tol


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("B", [2, 3, 7])
def test_matches_torch_autograd(case: dict, B: int, split_on: None) -> None:
    """float64, against autograd directly, from parts of one sequence upward."""
    prob = make_problem(NUMPY, np.random.default_rng(B), T=6, B=B, M=5, D=6, C=3, **case)
    parts = _parallel.batch_parts(np, B, 6)
    assert len(parts) == min(max(2, _parallel.max_threads()), B)
    assert [b for p in parts for b in range(p.start, p.stop)] == list(range(B))
    assert_matches_torch(prob)


def test_finite_differences(split_on: None) -> None:
    """The split gradient against five-point central differences, every entry."""
    prob = make_problem(NUMPY, np.random.default_rng(5), T=7, B=3, M=3, D=4, C=3, h0=True)
    _, grads, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **prob.kwargs)
    eps = 1e-3  # error O(eps^4) from the stencil, O(1e-16 / eps) from rounding

    def loss_at(key: str, i: tuple[int, ...], step: float) -> float:
        p = {k: v.copy() for k, v in prob.params.items()}
        p[key][i] += step
        return float(bptt.loss_and_grad(p, prob.inputs, prob.targets, **prob.kwargs)[0])

    for key, value in prob.params.items():
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            f = {k: loss_at(key, i, k * eps) for k in (-2, -1, 1, 2)}
            numeric[i] = (8 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12 * eps)
        assert rel_err(grads[key], numeric) < 1e-9, key


def test_parts_run_on_two_threads_with_one_blas_thread(
    split_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("threadpoolctl", reason="the BLAS limit needs threadpoolctl")
    from threadpoolctl import threadpool_info

    if not _threaded():
        pytest.skip("one thread allowed: the parts run inline")
    seen: list[tuple[str, list[int], int]] = []
    real_recurrence, real_row_blocks = model.recurrence, _parallel.row_blocks

    def spy(W, states, *args, **kwargs):
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        tanh_blocks = len(real_row_blocks(np, states.shape[1], states.shape[1] * W.shape[0]))
        seen.append((threading.current_thread().name, blas, tanh_blocks))
        time.sleep(0.05)  # both parts are under way at once
        return real_recurrence(W, states, *args, **kwargs)

    monkeypatch.setattr(model, "recurrence", spy)
    monkeypatch.setattr(_parallel, "MIN_WORK", 1)  # a thread split anywhere else would show
    monkeypatch.setattr(_parallel, "MIN_BLAS_WORK", 0)  # only the split may limit BLAS
    prob = make_problem(NUMPY, np.random.default_rng(0), T=5, B=6, M=4, D=5, C=3)
    bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)
    threads = [name for name, _, _ in seen]
    assert len(threads) == len(_parallel.batch_parts(np, 6, 5))
    assert threading.current_thread().name in threads
    assert any(name.startswith("bptt") for name in threads)
    assert all(b == [1] * len(b) and b for _, b, _ in seen)  # one BLAS thread in every part
    assert all(n == 1 for _, _, n in seen)  # and no row-block split inside a part
    after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert after and all(n >= 1 for n in after)


@pytest.mark.parametrize("step", ["overlap", "split"])
def test_threaded_runs_are_bitwise_repeatable(step: str) -> None:
    """The overlap's worker runs its tasks in order, the split adds its parts in order:
    the sums add in one order every time."""
    (_parallel.set_overlap if step == "overlap" else _parallel.set_split)("on")
    try:
        prob = make_problem(
            NUMPY, np.random.default_rng(1), T=40, B=16, M=9, D=32, C=9, dtype="float32"
        )
        runs = [bptt.loss_and_grad(prob.params, prob.inputs, prob.targets) for _ in range(5)]
    finally:
        _parallel.set_overlap(None)
        _parallel.set_split(None)
    for loss, grads, h in runs[1:]:
        assert float(loss) == float(runs[0][0])
        for key in grads:
            np.testing.assert_array_equal(grads[key], runs[0][1][key])
        np.testing.assert_array_equal(h, runs[0][2])


def test_result_does_not_depend_on_which_thread_ran_a_part(
    split_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool thread that is slow to start lets this thread take its part over: the
    bits stay those of a run in which each part had its own thread."""
    if not _threaded():
        pytest.skip("one thread allowed: the parts run inline")
    prob = make_problem(NUMPY, np.random.default_rng(2), T=8, B=8, M=7, D=16, C=7, h0=True)
    loss0, grads0, h0 = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets, **prob.kwargs)
    ran: list[str] = []
    real_in_part = _parallel._in_part
    busy = threading.Event()
    pool = _parallel._pool(len(_parallel.batch_parts(np, 8, 16)) - 1)  # the pool the parts get

    def occupy() -> None:  # keeps every pool thread busy until this thread is done
        busy.wait(5)

    def in_part(fn, *args):
        ran.append(threading.current_thread().name)
        return real_in_part(fn, *args)

    monkeypatch.setattr(_parallel, "_in_part", in_part)
    blockers = [pool.submit(occupy) for _ in range(_parallel._state["size"])]
    try:
        loss1, grads1, h1 = bptt.loss_and_grad(
            prob.params, prob.inputs, prob.targets, **prob.kwargs
        )
    finally:
        busy.set()
        for b in blockers:
            b.result()
    assert ran == []  # no pool thread ran a part: this thread took them all over
    assert float(loss1) == float(loss0)
    np.testing.assert_array_equal(h1, h0)
    for key in grads0:
        np.testing.assert_array_equal(grads1[key], grads0[key], err_msg=key)


@pytest.mark.parametrize("rows", [2, 3], ids=["this-thread", "pool-thread"])
@pytest.mark.parametrize("error", [FloatingPointError("part failed"), KeyboardInterrupt()])
def test_a_failing_part_reaches_the_caller(
    split_on: None, monkeypatch: pytest.MonkeyPatch, error: BaseException, rows: int
) -> None:
    """An error in either part (B=5 in parts of 2 and 3 rows) reaches the caller, the
    pool is left idle, and the next call is exact."""
    _parallel.set_max_threads(2)
    try:
        prob = make_problem(NUMPY, np.random.default_rng(0), T=6, B=5, M=4, D=5, C=3)
        assert [p.stop - p.start for p in _parallel.batch_parts(np, 5, 5)] == [2, 3]
        loss0, grads0, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)
        real = model.backward

        def failing(params, dlogits, cache, xp):
            if dlogits.shape[1] == rows:
                raise error
            return real(params, dlogits, cache, xp)

        monkeypatch.setattr(model, "backward", failing)
        with pytest.raises(type(error)):
            bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)
        if _parallel._state["pool"] is not None:  # the pool is free again
            assert _parallel._state["pool"].submit(lambda: 1).result(timeout=5) == 1
        monkeypatch.setattr(model, "backward", real)
        loss1, grads1, _ = bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)
    finally:
        _parallel.set_max_threads(None)
    assert float(loss1) == float(loss0)
    for key in grads0:
        np.testing.assert_array_equal(grads1[key], grads0[key])


def test_policy() -> None:
    """auto: NumPy, large B*D^2, parts of 32+ rows; before the overlap; on/off; bad values."""

    def count(xp, B, D):
        parts = _parallel.batch_parts(xp, B, D)
        assert [b for p in parts for b in range(p.start, p.stop)] == list(range(B))
        return len(parts)

    strict = pytest.importorskip("array_api_strict")
    threaded = _threaded() and _parallel._blas() is not None
    n = _parallel.max_threads()
    assert count(np, 128, 512) == (min(n, 4) if threaded else 1)  # S3
    assert count(np, 256, 1024) == (min(n, 8) if threaded else 1)  # beyond the overlap's range
    assert count(np, 64, 256) == 1  # S2 float32: the overlap is faster
    assert count(np, 128, 256) == 1
    assert count(np, 64, 512) == (min(n, 2) if threaded else 1)
    assert len(_parallel.batch_parts(np, 64, 256, 8)) == (min(n, 2) if threaded else 1)  # f64
    assert len(_parallel.batch_parts(np, 32, 100, 8)) == 1  # S1 float64
    assert count(np, 32, 100) == 1  # S1
    assert count(np, 32, 1024) == 1  # parts of fewer than MIN_PART_ROWS rows
    assert count(strict, 128, 512) == 1  # off NumPy, never by default
    try:
        _parallel.set_split("on")
        assert count(strict, 3, 2) == 2 and count(np, 1, 1) == 1
        assert count(np, 64, 256) == max(2, _parallel.max_threads())
        _parallel.set_split("off")
        assert count(np, 128, 512) == 1
    finally:
        _parallel.set_split(None)
    with pytest.raises(ValueError, match="split mode"):
        _parallel.set_split("sometimes")


def test_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPTT_SPLIT", "on")
    assert len(_parallel.batch_parts(np, 4, 2)) >= 2
    monkeypatch.setenv("BPTT_SPLIT", "off")
    assert len(_parallel.batch_parts(np, 128, 512)) == 1
    monkeypatch.setenv("BPTT_SPLIT", "yes")
    with pytest.raises(ValueError, match="BPTT_SPLIT"):
        _parallel.batch_parts(np, 4, 2)
