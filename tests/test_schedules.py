"""Schedules (bptt.execution.schedules and its numpy_exec): one step, arranged differently.

"overlap" and "split" give the single schedule's result to rounding, match torch
autograd and finite differences, and the same bits on every run whatever thread
ran what; off NumPy they are refused; "auto" follows the measured policy.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest
from helpers import make_problem, rel_err, run_schedule
from torch_reference import assert_matches_torch

import bptt
from bptt import backends
from bptt.execution import schedules
from bptt.execution.numpy_exec import policy, recurrences, threads
from bptt.math import heads, model, step


def _home(name: str):
    """Where a NumPy schedule finds ``name``: the recurrences are NumPy's own."""
    return recurrences if name in ("recurrence", "reverse_recurrence") else model


NUMPY = backends.get_backend("numpy")
THREADED = ("overlap", "split")

# head, ids, bias, mask, h0, reduction: each flag on in at least one case
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


@pytest.mark.parametrize("schedule", THREADED)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_same_result_as_single(schedule: str, dtype: str, case: dict) -> None:
    """T=23 in 10 uneven blocks, or B=5 in uneven parts, with dropout, against one block;
    a masked mean weighs each step by the whole batch's count, not by its part's."""
    tol = 1e-12 if dtype == "float64" else 2e-5
    rng = np.random.default_rng(3)
    prob = make_problem(NUMPY, rng, T=23, B=5, M=5, D=7, C=4, dtype=dtype, **case)
    drop = ((rng.random((23, 5, 7)) < 0.7) / 0.7).astype(dtype)
    loss0, grads0, h0 = run_schedule(prob, "single", drop)
    loss1, grads1, h1 = run_schedule(prob, schedule, drop)
    assert loss1.dtype == loss0.dtype and loss1.shape == ()
    assert abs(float(loss1) - float(loss0)) <= tol * abs(float(loss0))
    assert list(grads1) == list(prob.params)
    for key in grads0:
        assert grads1[key].dtype == grads0[key].dtype
        assert rel_err(grads1[key], grads0[key]) < tol, key
    assert h1.shape == h0.shape and rel_err(h1, h0) < tol


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize(("schedule", "size"), [("overlap", 1), ("overlap", 2), ("overlap", 30),
                                                ("split", 2), ("split", 7)])  # fmt: skip
def test_matches_torch_autograd(case: dict, schedule: str, size: int) -> None:
    """float64 against autograd: T from one block to 10 blocks of 3, B from parts of one."""
    T, B = (size, 4) if schedule == "overlap" else (6, size)
    prob = make_problem(NUMPY, np.random.default_rng(size), T=T, B=B, M=5, D=6, C=3, **case)
    assert_matches_torch(prob, schedule)


@pytest.mark.parametrize("schedule", THREADED)
def test_finite_differences(schedule: str) -> None:
    """Against five-point central differences of the loss, every entry (bptt.gradcheck
    perturbs on the single schedule, so the differences here go through loss_and_grad)."""
    prob = make_problem(NUMPY, np.random.default_rng(5), T=12, B=3, M=3, D=4, C=3, h0=True)
    _, grads, _ = run_schedule(prob, schedule)
    eps = 1e-3

    def loss_at(key: str, i: tuple[int, ...], delta: float) -> float:
        p = {k: v.copy() for k, v in prob.params.items()}
        p[key][i] += delta
        return float(bptt.loss_and_grad(p, prob.inputs, prob.targets, schedule=schedule,
                                        **prob.kwargs)[0])  # fmt: skip

    for key, value in prob.params.items():
        numeric = np.zeros_like(value)
        for i in np.ndindex(value.shape):
            f = {k: loss_at(key, i, k * eps) for k in (-2, -1, 1, 2)}
            numeric[i] = (8 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12 * eps)
        assert rel_err(grads[key], numeric) < 1e-9, key


@pytest.mark.parametrize("schedule", THREADED)
def test_off_numpy_a_numpy_schedule_is_refused(be, schedule: str) -> None:
    """Forcing a NumPy schedule on another library raises, naming the argument; auto
    and single run the pure step there."""
    dtype = "float64" if be.supports("float64") else "float32"
    prob = make_problem(be, np.random.default_rng(0), dtype=dtype)
    if be.name == "numpy":
        run_schedule(prob, schedule)
        return
    with pytest.raises(ValueError, match=f"schedule: '{schedule}' .* NumPy arrays only"):
        run_schedule(prob, schedule)
    loss, _, _ = run_schedule(prob, "auto")
    loss1, _, _ = run_schedule(prob, "single")
    assert float(be.to_numpy(loss)) == float(be.to_numpy(loss1))


@pytest.mark.parametrize("schedule", THREADED)
def test_threaded_runs_are_bitwise_repeatable(schedule: str) -> None:
    """The overlap's worker runs its tasks in order, the split adds its parts in order."""
    prob = make_problem(NUMPY, np.random.default_rng(1), T=40, B=16, M=9, D=32, C=9,
                        dtype="float32")  # fmt: skip
    runs = [run_schedule(prob, schedule) for _ in range(5)]
    for loss, grads, h in runs[1:]:
        assert float(loss) == float(runs[0][0])
        for key in grads:
            np.testing.assert_array_equal(grads[key], runs[0][1][key])
        np.testing.assert_array_equal(h, runs[0][2])


def _needs_threads() -> None:
    if not policy.threads_usable():
        pytest.skip("one thread allowed, or no threadpoolctl: the work runs here")


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_overlap_worker_runs_the_products_with_one_blas_thread(monkeypatch) -> None:
    _needs_threads()
    seen: list[tuple[str, str, list[int]]] = []
    for name in ("output_grads", "weight_grads", "recurrence", "reverse_recurrence"):
        real = getattr(_home(name), name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen.append((_name, threading.current_thread().name, _blas_threads()))
            return _real(*args, **kwargs)

        monkeypatch.setattr(_home(name), name, spy)
    prob = make_problem(NUMPY, np.random.default_rng(0), T=20, B=3, M=4, D=5, C=3)
    run_schedule(prob, "overlap")
    where = {name: {thread for n, thread, _ in seen if n == name} for name, _, _ in seen}
    main = threading.current_thread().name
    assert where["recurrence"] == where["reverse_recurrence"] == {main}
    # the worker runs the blocks' products; this thread takes over those not begun
    for name in ("output_grads", "weight_grads"):
        assert [n for n, _, _ in seen].count(name) == 10
        assert any(t.startswith("bptt-overlap") for t in where[name])
    assert all(b == [1] * len(b) for _, _, b in seen)
    assert _blas_threads() and all(n >= 1 for n in _blas_threads())


def test_overlap_result_does_not_depend_on_which_thread_ran_a_block(monkeypatch) -> None:
    """A slow recurrence lets the worker run every output block; slower weight tasks
    make this thread take some over at the end: the bits stay those of a plain run."""
    import time

    _needs_threads()
    prob = make_problem(NUMPY, np.random.default_rng(2), T=30, B=8, M=7, D=16, C=7, h0=True)
    loss0, grads0, _ = run_schedule(prob, "overlap")
    ran: list[str] = []
    worker = threads.ordered_worker()
    real_submit = worker.submit

    def submit(fn, *args):
        def task(*a):
            ran.append(fn.__name__)
            if fn.__name__ == "weight_block":
                time.sleep(0.05)
            return fn(*a)

        return real_submit(task, *args)

    def slowed(real):
        def run(*args, **kwargs):
            time.sleep(0.02)  # a block of the recurrence takes 20 ms, a weight task 50
            return real(*args, **kwargs)

        return run

    monkeypatch.setattr(worker, "submit", submit)
    for name in ("recurrence", "reverse_recurrence"):
        monkeypatch.setattr(recurrences, name, slowed(getattr(recurrences, name)))
    loss1, grads1, _ = run_schedule(prob, "overlap")
    assert ran.count("output_block") >= 9  # the worker kept up with the forward pass
    assert 1 <= ran.count("weight_block") < 10  # and this thread took some over
    assert float(loss1) == float(loss0)
    for key in grads0:
        np.testing.assert_array_equal(grads1[key], grads0[key], err_msg=key)


@pytest.mark.parametrize("error", [FloatingPointError("block failed"), KeyboardInterrupt()])
@pytest.mark.parametrize("where", ["weight_grads", "reverse_recurrence"])
def test_overlap_failure_reaches_the_caller_and_leaves_no_work(monkeypatch, error, where) -> None:
    """An error in a worker task or in this thread's part (Ctrl-C in the recurrence):
    raised here, the worker is left idle, and the next call gives the same bits."""
    prob = make_problem(NUMPY, np.random.default_rng(4), T=30, B=3, M=4, D=5, C=3)
    loss0, grads0, _ = run_schedule(prob, "overlap")
    real, calls = getattr(_home(where), where), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(_home(where), where, failing)
    with pytest.raises(type(error)):
        run_schedule(prob, "overlap")
    assert threads.ordered_worker().submit(lambda: 1).result(timeout=5) == 1
    monkeypatch.setattr(_home(where), where, real)
    loss1, grads1, _ = run_schedule(prob, "overlap")
    assert float(loss1) == float(loss0)
    for key in grads0:
        np.testing.assert_array_equal(grads1[key], grads0[key])


def test_split_parts_run_on_two_threads_with_one_blas_thread(monkeypatch) -> None:
    import time

    _needs_threads()
    seen: list[tuple[str, list[int]]] = []
    real = recurrences.recurrence

    def spy(*args, **kwargs):
        seen.append((threading.current_thread().name, _blas_threads()))
        time.sleep(0.05)  # both parts are under way at once
        return real(*args, **kwargs)

    monkeypatch.setattr(recurrences, "recurrence", spy)
    monkeypatch.setattr(policy, "MIN_BLAS_WORK", 0)  # only the split may limit BLAS
    prob = make_problem(NUMPY, np.random.default_rng(0), T=5, B=6, M=4, D=5, C=3)
    run_schedule(prob, "split")
    names = [name for name, _ in seen]
    assert len(names) == len(policy.batch_parts(6, forced=True))
    assert threading.current_thread().name in names
    assert any(name.startswith("bptt") for name in names)
    assert all(b == [1] * len(b) and b for _, b in seen)  # one BLAS thread in every part
    assert _blas_threads() and all(n >= 1 for n in _blas_threads())


def test_split_result_does_not_depend_on_which_thread_ran_a_part(monkeypatch) -> None:
    """Pool threads busy elsewhere: this thread takes every part over, same bits."""
    _needs_threads()
    prob = make_problem(NUMPY, np.random.default_rng(2), T=8, B=8, M=7, D=16, C=7, h0=True)
    loss0, grads0, h0 = run_schedule(prob, "split")
    pool = threads._pool(len(policy.batch_parts(8, forced=True)) - 1)  # the parts' pool
    busy, ran = threading.Event(), []
    real = step.loss_and_grad

    def spy(*args, **kwargs):
        ran.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(step, "loss_and_grad", spy)
    blockers = [pool.submit(busy.wait, 5) for _ in range(pool._max_workers)]
    try:
        loss1, grads1, h1 = run_schedule(prob, "split")
    finally:
        busy.set()
        for b in blockers:
            b.result()
    assert set(ran) == {threading.current_thread().name}  # no pool thread ran a part
    assert float(loss1) == float(loss0)
    np.testing.assert_array_equal(h1, h0)
    for key in grads0:
        np.testing.assert_array_equal(grads1[key], grads0[key], err_msg=key)


@pytest.mark.parametrize("rows", [2, 3], ids=["this-thread", "pool-thread"])
@pytest.mark.parametrize("error", [FloatingPointError("part failed"), KeyboardInterrupt()])
def test_split_failure_reaches_the_caller(monkeypatch, error: BaseException, rows: int) -> None:
    """An error in either part (B=5 in parts of 2 and 3 rows) reaches the caller, the
    pool is left idle, and the next call is exact."""
    monkeypatch.setenv("BPTT_THREADS", "2")
    prob = make_problem(NUMPY, np.random.default_rng(0), T=6, B=5, M=4, D=5, C=3)
    assert [p.stop - p.start for p in policy.batch_parts(5, forced=True)] == [2, 3]
    loss0, grads0, _ = run_schedule(prob, "split")
    real = model.weight_grads

    def failing(params, dZ, *args):
        if dZ.shape[1] == rows:
            raise error
        return real(params, dZ, *args)

    monkeypatch.setattr(model, "weight_grads", failing)
    with pytest.raises(type(error)):
        run_schedule(prob, "split")
    assert threads._pool(1).submit(lambda: 1).result(timeout=5) == 1
    monkeypatch.setattr(model, "weight_grads", real)
    loss1, grads1, _ = run_schedule(prob, "split")
    assert float(loss1) == float(loss0)
    for key in grads0:
        np.testing.assert_array_equal(grads1[key], grads0[key])


def test_auto_policy(monkeypatch) -> None:
    """split for large B*D^2 with parts of 32+ rows, overlap at mid sizes, else single."""
    monkeypatch.setenv("BPTT_THREADS", "2")
    usable = policy.threads_usable()

    def auto(T: int, B: int, D: int, itemsize: int = 4) -> str:
        return policy.choose(T, B, D, itemsize) if usable else "single"

    assert auto(100, 64, 256) == ("overlap" if usable else "single")  # S2, the main job
    assert auto(25, 32, 100) == "single"  # S1: hand-overs cost more than they save
    assert auto(200, 128, 512) == ("split" if usable else "single")  # S3
    assert auto(100, 64, 256, 8) == ("split" if usable else "single")  # S2 float64
    assert auto(25, 32, 100, 8) == "single"  # S1 float64
    assert auto(100, 128, 256) == ("overlap" if usable else "single")
    assert auto(100, 32, 1024) == ("overlap" if usable else "single")  # 2^25: not split
    assert auto(100, 32, 2048) == "single"  # parts of fewer than 32 rows, beyond the overlap
    assert auto(3, 64, 256) == "single"  # blocks of one step
    # a stack or a gated cell cannot overlap: the batch split where the overlap would run
    stack = functools.partial(policy.choose, single=False)
    if usable:
        assert stack(100, 64, 256, 4) == "split" and stack(100, 64, 128, 4) == "split"
        assert stack(100, 32, 1024, 4) == "single"  # one part of 32 rows: nothing to split
        assert stack(25, 32, 100, 4) == "single"  # S1
    monkeypatch.setenv("BPTT_THREADS", "1")
    assert policy.choose(200, 128, 512, 4) == "single"  # one thread allowed
    assert policy.choose(100, 64, 256, 4, single=False) == "single"


def test_blocks_and_parts_cover_everything(monkeypatch) -> None:
    monkeypatch.setenv("BPTT_THREADS", "3")
    for T in (1, 2, 7, 23, 100):
        for forced in (True, False):
            blocks = policy.time_blocks(T, forced=forced)
            assert [t for r in blocks for t in r] == list(range(T))
    assert len(policy.time_blocks(100, forced=False)) == 10
    assert len(policy.time_blocks(7, forced=True)) == 7
    assert len(policy.time_blocks(7, forced=False)) == 3
    for B in (1, 2, 5, 64, 200):
        parts = policy.batch_parts(B, forced=True)
        assert [b for p in parts for b in range(p.start, p.stop)] == list(range(B))
        assert len(parts) == min(3, B)
    assert len(policy.batch_parts(64, forced=False)) == 2  # parts of >= 32 rows


def test_schedule_argument_and_environment(monkeypatch) -> None:
    prob = make_problem(NUMPY, np.random.default_rng(0))
    with pytest.raises(ValueError, match="schedule: expected one of"):
        run_schedule(prob, "sometimes")
    monkeypatch.setenv(schedules.ENV_VAR, "overlap")
    assert schedules.resolve(None, np, 30, 2, 2, 8)[0] == "overlap"
    assert schedules.resolve("single", np, 30, 2, 2, 8)[0] == "single"  # the argument wins
    monkeypatch.setenv(schedules.ENV_VAR, "yes")
    with pytest.raises(ValueError, match="BPTT_SCHEDULE: expected one of"):
        bptt.loss_and_grad(prob.params, prob.inputs, prob.targets)
    monkeypatch.setenv("BPTT_THREADS", "two")
    with pytest.raises(ValueError, match="BPTT_THREADS"):
        threads.max_threads()


def test_reduce_with_mask_weights_is_the_unmasked_head() -> None:
    """heads.reduce with an all-true mask's (T, B) weights equals the float path."""
    rng = np.random.default_rng(0)
    terms, d = rng.random((4, 3)), rng.random((4, 3, 2))
    kw = dict(head="softmax", reduction="mean", dtype=np.float64, xp=np)
    w = heads.loss_weights(np.ones((4, 3), bool), (4, 3, 2), **kw)
    s = heads.loss_weights(None, (4, 3, 2), **kw)
    la, da = heads.reduce(terms, d.copy(), w, np)
    lb, db = heads.reduce(terms, d.copy(), s, np)
    np.testing.assert_allclose(la, lb, rtol=1e-15)
    np.testing.assert_allclose(da, db, rtol=1e-15)


@pytest.mark.parametrize("n", [1, 5, 12, 40])
def test_one_hot_and_column_sums(be, n: int) -> None:
    """Both ways of building one-hot rows, and sums over rows as a GEMV, against NumPy."""
    ids = np.random.default_rng(n).integers(0, n, 12)
    dtype = "float64" if be.supports("float64") else "float32"
    hot = model.one_hot(be.asarray(ids), n, be.xp.float32, be.xp)
    assert hot.dtype == be.xp.float32 and hot.device == be.device
    np.testing.assert_array_equal(be.to_numpy(hot), np.eye(n, dtype=np.float32)[ids])
    x = np.random.default_rng(0).standard_normal((12, n)).astype(dtype)
    sums = model.column_sums(be.asarray(x, dtype=dtype), be.xp)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(be.to_numpy(sums), x.sum(axis=0), **tol)


@pytest.mark.parametrize("carried", [False, True], ids=["from-zero", "carried"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_recurrences_give_the_bits_of_the_pure_ones(carried: bool, dtype: str) -> None:
    """bptt.execution.numpy_exec.recurrences (each step written into the result) against
    bptt.math.model's (steps stacked once): the same bits, forward and backward."""
    xp = backends.get_backend("numpy").xp
    rng = np.random.default_rng(5)
    T, B, D = 7, 3, 6
    W = rng.standard_normal((D, D)).astype(dtype) / 3
    xu = rng.standard_normal((T, B, D)).astype(dtype)
    s0 = rng.uniform(-0.9, 0.9, (B, D)).astype(dtype) if carried else None
    dS = rng.standard_normal((T, B, D)).astype(dtype)
    dz = rng.standard_normal((B, D)).astype(dtype) if carried else None
    states = model.recurrence(W, xu, s0, xp)
    np.testing.assert_array_equal(recurrences.recurrence(W, xu, s0, xp), states)
    np.testing.assert_array_equal(
        recurrences.reverse_recurrence(W, states, dS, dz, xp),
        model.reverse_recurrence(W, states, dS, dz, xp),
    )


def test_every_numpy_schedule_uses_the_numpy_recurrences(monkeypatch) -> None:
    calls = []
    original = recurrences.recurrence
    monkeypatch.setattr(recurrences, "recurrence", lambda *a: calls.append(1) or original(*a))
    params = bptt.init_params(5, 8, 5, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, (12, 4)), rng.integers(0, 5, (12, 4))
    for name in ("single", "overlap", "split"):
        calls.clear()
        bptt.loss_and_grad(params, x, y, schedule=name)
        assert calls, name
