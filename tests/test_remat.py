"""Memory-bounded BPTT (bptt/math/remat.py): the plans, the dynamic program against brute
force, and gradients equal to full BPTT for every setting, cell, stack, mask,
dropout, head and backend, under ``jax.jit`` too.

What is bit for bit (NumPy): the loss's last state and dL/dh0 (the replay runs the
first pass's operations, and the gradient carried across a segment boundary joins
dS_t as full BPTT's sum does); the parameter gradients are sums of one product per
segment, so they are compared at 1e-12 (float64).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any

import numpy as np
import pytest
from helpers import rel_err

import bptt
from bptt.math import remat
from bptt.math.cells import CELLS
from bptt.math.remat import Budget, hsm_table, plan

TOL = 1e-12
SETTINGS = [1, 3, "sqrt", "budget:5", "budget:13", 100]


# -- the plans ---------------------------------------------------------------------------


def _brute_force(T: int, m: int, w: int) -> float:
    """The fewest forward steps over every policy of the model of docs/derivation.md
    (Dijkstra over (held states, gradient position)): hold at most m states beyond
    h0; an advance runs steps a+1..b from a held s_a and holds s_b; a replay of steps
    a+1..p from a held s_a needs held + w (p - a) <= m and moves the gradient to a."""
    start = (frozenset(), T)
    dist = {start: 0}
    queue = [(0, 0, start)]
    count = itertools.count(1)
    while queue:
        cost, _, (held, p) = heapq.heappop(queue)
        if p == 0:
            return cost
        if cost > dist[(held, p)]:
            continue
        moves = []
        for a in (0, *held):
            if len(held) + w * (p - a) <= m:  # replay a+1..p, then states past a are useless
                moves.append((p - a, (frozenset(h for h in held if h < a), a)))
            if len(held) + 1 + w <= m:  # an advance leaves room for a replay after it
                for b in range(a + 1, p):
                    if b not in held:
                        moves.append((b - a, (held | {b}, p)))
        for step, state in moves:
            if cost + step < dist.get(state, math.inf):
                dist[state] = cost + step
                heapq.heappush(queue, (cost + step, next(count), state))
    return math.inf


@pytest.mark.parametrize("w", [1, 2, 4])
@pytest.mark.parametrize("T", range(1, 8))
def test_dynamic_program_matches_brute_force(T: int, w: int) -> None:
    for m in range(1, w * T + 2):
        cost = hsm_table(T, m, w)[0][T, m]
        brute = _brute_force(T, m, w)
        if math.isinf(brute):
            assert cost >= hsm_table(T, m, w)[0].max() // 2, (T, m)  # infeasible both ways
        else:
            assert cost == brute, (T, m, cost, brute)


def test_plan_runs_the_forward_steps_it_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The executed plan runs exactly plan.cost forward steps, the DP's C(T, m)."""
    steps = []
    forward = remat.layers.forward

    def counting(params, inputs, *args, **kwargs):
        steps.append(inputs.shape[0])
        return forward(params, inputs, *args, **kwargs)

    monkeypatch.setattr(remat.layers, "forward", counting)
    model, params, x, y = _problem(np.random.default_rng(0), T=23)
    for setting in (1, 4, "sqrt", "budget:6", "budget:13", "budget:92"):
        steps.clear()
        model.loss_and_grad(params, x, y, remat=setting)
        p = plan(23, setting)
        assert sum(steps) == p.cost, setting
        if setting.startswith("budget") if isinstance(setting, str) else False:
            m = int(setting[7:])
            assert p.cost == hsm_table(23, m)[0][23, m] and p.peak <= m
    assert plan(23, "budget:92").cost == 23 and plan(23, 1).cost == 2 * 23 - 1


@pytest.mark.parametrize("T", [10, 37, 100, 200])
def test_dynamic_program_at_least_as_good_as_every_k_at_its_memory(T: int) -> None:
    for k in range(1, T + 1):
        uniform = plan(T, k)
        best = plan(T, Budget(uniform.peak))
        assert best.peak <= uniform.peak and best.cost <= uniform.cost, (T, k)
    assert plan(T, "sqrt") == plan(T, math.ceil(math.sqrt(T)))
    assert plan(T, Budget(remat.REPLAY_SLOTS * T)).cost == T  # room for all: no recompute


@pytest.mark.parametrize("T", [1, 2, 10, 37, 100])
def test_the_uniform_plan_a_budget_scans_is_the_cheapest_that_fits(T: int) -> None:
    """Under a trace a budget runs every k-th state (two loops XLA keeps lean): the k
    whose plan fits m with the fewest forward steps; the closed form is the plan's."""
    for k in range(1, T + 1):
        assert remat.uniform_cost(T, k) == (plan(T, k).cost, plan(T, k).peak), (T, k)
    for m in range(1, remat.REPLAY_SLOTS * T + 2):
        k = remat.uniform_k(T, m)
        fitting = [plan(T, j) for j in range(1, T + 1) if plan(T, j).peak <= m]
        if k is None:
            assert not fitting, (T, m)
            continue
        chosen = plan(T, k)
        assert chosen.peak <= m and chosen.cost == min(p.cost for p in fitting), (T, m)
        assert chosen.cost >= plan(T, Budget(m)).cost  # the dynamic program's is no worse
    assert remat.uniform_k(T, remat.REPLAY_SLOTS * T) == T  # room for all: full BPTT


@pytest.mark.parametrize("bad", [0, -2, 1.5, "half", "budget:", "budget:0", Budget(0), True, [3]])
def test_bad_settings_name_the_argument(bad: Any) -> None:
    with pytest.raises(ValueError, match="remat"):
        remat.parse(bad)
    with pytest.raises(ValueError, match=r"remat: a budget of 4 .* give 5 or more"):
        plan(5, "budget:4")


# -- gradients equal full BPTT's -----------------------------------------------------------


def _problem(rng: np.random.Generator, *, T: int = 11, B: int = 3, M: int = 4, D: int = 5,
             C: int = 3, cell: str = "tanh", layers: int = 1, head: str = "softmax",
             dense: bool = True, bidirectional: bool = False) -> tuple[Any, ...]:  # fmt: skip
    model = bptt.RNN(M, D, C, cell=cell, layers=layers, head=head, bidirectional=bidirectional)
    params = model.init(seed=1, dtype="float64")
    params = {k: v + rng.uniform(-0.3, 0.3, v.shape) if v.ndim == 1 else v
              for k, v in params.items()}  # fmt: skip  # nonzero biases
    x = rng.standard_normal((T, B, M)) if dense else rng.integers(0, M, (T, B))
    if head == "softmax":
        y = rng.integers(0, C, (T, B))
    elif head == "sigmoid":
        y = (rng.random((T, B, C)) < 0.5).astype(np.float64)
    else:
        y = rng.standard_normal((T, B, C))
    return model, params, x, y


def _extras(rng: np.random.Generator, model: Any, T: int, B: int, *, masks: bool,
            h0: bool) -> dict[str, Any]:  # fmt: skip
    kw: dict[str, Any] = {}
    width = model.hidden_size * (2 if model.bidirectional else 1)
    if masks:
        kw["mask"] = rng.random((T, B)) < 0.7
        kw["dropout_mask"] = (rng.random((T, B, width)) < 0.6) / 0.6
        if model.layers > 1:
            kw["layer_masks"] = [(rng.random((T, B, width)) < 0.6) / 0.6
                                 for _ in range(model.layers - 1)]  # fmt: skip
    if h0:
        shape = model.state_shape(B)
        kw["h0"] = rng.standard_normal(shape) * 0.5
        if model.cell == "lstm":
            kw["h0"] = (kw["h0"], rng.standard_normal(shape) * 0.5)
    return kw


def _assert_same(full: Any, part: Any, tol: float = TOL) -> None:
    loss, grads, h_last = full
    loss_r, grads_r, h_last_r = part
    assert abs(float(loss_r) - float(loss)) <= tol * abs(float(loss))
    assert list(grads_r) == list(grads)
    for key in grads:
        assert rel_err(grads_r[key], grads[key]) < tol, key
    for a, b in zip(np.atleast_1d(h_last), np.atleast_1d(h_last_r), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # bit for bit


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("head", ["softmax", "sigmoid", "mse"])
@pytest.mark.parametrize("flags", list(itertools.product([True, False], repeat=2)))
def test_every_setting_equals_full_bptt_numpy(cell: str, layers: int, head: str,
                                              flags: tuple[bool, bool]) -> None:  # fmt: skip
    masks, h0 = flags
    rng = np.random.default_rng(layers + 7 * len(head))
    model, params, x, y = _problem(rng, cell=cell, layers=layers, head=head, dense=masks)
    kw = _extras(rng, model, *x.shape[:2], masks=masks, h0=h0)
    full = model.loss_and_grad(params, x, y, **kw)
    for setting in SETTINGS:
        _assert_same(full, model.loss_and_grad(params, x, y, remat=setting, **kw))


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("head", ["softmax", "sigmoid", "mse"])
@pytest.mark.parametrize("flags", [(True, True), (False, False)])
def test_bidirectional_equals_full_bptt_numpy(cell: str, layers: int, head: str,
                                              flags: tuple[bool, bool]) -> None:  # fmt: skip
    """A bidirectional stack runs the plan per layer and direction (bptt/math/remat_layerwise.py):
    the same loss and gradients to 1e-12, the last states bit for bit."""
    masks, h0 = flags
    rng = np.random.default_rng(layers + 5 * len(head))
    model, params, x, y = _problem(rng, cell=cell, layers=layers, head=head, dense=masks,
                                   bidirectional=True)  # fmt: skip
    kw = _extras(rng, model, *x.shape[:2], masks=masks, h0=h0)
    full = model.loss_and_grad(params, x, y, **kw)
    for setting in SETTINGS:
        _assert_same(full, model.loss_and_grad(params, x, y, remat=setting, **kw))


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_vjp_equals_full_bptt_and_dh0_is_bit_for_bit(cell: str, layers: int,
                                                     bidirectional: bool) -> None:  # fmt: skip
    rng = np.random.default_rng(3)
    model, params, x, _ = _problem(rng, cell=cell, layers=layers, bidirectional=bidirectional)
    kw = _extras(rng, model, *x.shape[:2], masks=True, h0=True)
    kw.pop("mask")
    out, pull = model.vjp(params, x, **kw)
    dlogits = rng.standard_normal(out.logits.shape)
    dstates = rng.standard_normal(out.states.shape)
    ref = pull(dlogits, dstates, with_inputs=True, with_h0=True)
    for setting in SETTINGS:
        out_r, pull_r = model.vjp(params, x, remat=setting, **kw)
        assert np.array_equal(out_r.logits, out.logits)
        got = pull_r(dlogits, dstates, with_inputs=True, with_h0=True)
        for key in ref.params:
            assert rel_err(got.params[key], ref.params[key]) < TOL, (setting, key)
        assert rel_err(got.inputs, ref.inputs) < TOL, setting
        if bidirectional:  # dL/dS of a lower layer: sums of per-segment products
            assert rel_err(got.h0, ref.h0) < TOL, setting
        else:
            assert np.array_equal(got.h0, ref.h0), setting  # every dz_t bit for bit
        only_states = pull_r(None, dstates).params
        assert rel_err(only_states["W"], pull(None, dstates).params["W"]) < TOL


@pytest.mark.parametrize("bidirectional", [False, True])
def test_every_backend_equals_full_bptt(be: Any, bidirectional: bool) -> None:
    dtype = "float64" if be.supports("float64") else "float32"
    tol = TOL if dtype == "float64" else 1e-5
    rng = np.random.default_rng(5)
    model, host, x, y = _problem(rng, T=7, layers=2, dense=False, bidirectional=bidirectional)
    kw = _extras(rng, model, 7, 3, masks=True, h0=True)
    dev = {k: be.asarray(np.asarray(v).astype(dtype), dtype=dtype) if k != "mask"
           else be.asarray(v) for k, v in kw.items() if k != "layer_masks"}  # fmt: skip
    dev["layer_masks"] = [be.asarray(m.astype(dtype), dtype=dtype) for m in kw["layer_masks"]]
    params = {k: be.asarray(v.astype(dtype), dtype=dtype) for k, v in host.items()}
    xs, ys = be.asarray(x), be.asarray(y)
    full = model.loss_and_grad(params, xs, ys, **dev)
    for setting in ("budget:9", 3):  # on JAX, k runs the scans over segments (remat_scan)
        part = model.loss_and_grad(params, xs, ys, remat=setting, **dev)
        assert abs(float(be.to_numpy(part[0])) - float(be.to_numpy(full[0]))) < tol
        for key in full[1]:
            assert rel_err(be.to_numpy(part[1][key]), be.to_numpy(full[1][key])) < tol, key
        assert rel_err(be.to_numpy(part[2]), be.to_numpy(full[2])) < tol


@pytest.mark.parametrize("bidirectional", [False, True])
def test_jit_compiles_remat_and_equals_eager(bidirectional: bool) -> None:
    """Under jax.jit (a static plan, each recurrence a lax.scan): no host read, the
    same gradients as the eager step and as full BPTT."""
    jax = pytest.importorskip("jax")
    from conftest import jax_x64

    with jax_x64(True):
        rng = np.random.default_rng(2)
        model, host, x, y = _problem(rng, T=9, layers=2, bidirectional=bidirectional)
        params = {k: jax.numpy.asarray(v) for k, v in host.items()}
        xs, ys = jax.numpy.asarray(x), jax.numpy.asarray(y)

        def step(p: Any, setting: Any) -> Any:
            return model.loss_and_grad(p, xs, ys, check_values=False, remat=setting)

        full = model.loss_and_grad(params, xs, ys)
        for setting in ("budget:9",):
            jitted = jax.jit(step, static_argnums=1)(params, setting)
            eager = step(params, setting)
            for got in (jitted, eager):
                assert abs(float(got[0]) - float(full[0])) < TOL
                for key in full[1]:
                    assert rel_err(got[1][key], full[1][key]) < TOL, key
            text = str(jax.make_jaxpr(step, static_argnums=1)(params, setting))
            assert "scan" in text


def test_training_step_takes_remat() -> None:
    from bptt.math.flat import Layout
    from bptt.train import TrainCarry, make_train_step

    rng = np.random.default_rng(4)
    model, params, x, y = _problem(rng, T=12, dense=False)
    layout = Layout.of(params)
    opt = bptt.optim.sgd(0.1)
    flat = layout.flatten(params, np)
    carry = TrainCarry(flat, opt.init(flat), np.zeros((3, 5)), np.zeros((), dtype=np.int64))
    outs = []
    for setting in (None, "sqrt"):
        step = make_train_step(opt, layout, model=model, remat=setting, dropout=0.3)
        new, loss, _ = step(carry, x, y)
        outs.append((new.params, float(loss)))
    assert rel_err(outs[0][0], outs[1][0]) < TOL and abs(outs[0][1] - outs[1][1]) < TOL


# -- on the GPU stand-in: no sync, no transfer, and the replay's kernels -----------------

LEAF_KERNELS, PIECE_KERNELS, REPLAY_FIXED = 39, 6, 0  # one tanh layer, ids, softmax
BIDIRECTIONAL_KERNELS_PER_STEP = 39  # remat=3, one bidirectional tanh layer, over full BPTT


def _proxy_kernels(monkeypatch: pytest.MonkeyPatch, bidirectional: bool = False) -> Any:
    """kernels(T, remat): the kernels of one loss_and_grad on the counting proxy over
    array_api_strict's device1 (a host read raises, a transfer is counted)."""
    import contextlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from proxy import Array, Namespace

    from bptt import backends

    be = backends.get_backend("array_api_strict", "device1")
    ns = Namespace(be.xp)

    class Proxy:
        name, device, integer, xp = be.name, be.device, be.integer, ns

        def asarray(self, x: Any, *, dtype: Any = None) -> Any:
            ns.transfers += 1
            return Array(be.asarray(x, dtype=dtype), ns)

        def activate(self) -> Any:
            return contextlib.nullcontext()

    proxy = Proxy()
    monkeypatch.setattr(backends, "backend_of", lambda x: proxy)
    model = bptt.RNN(5, 4, 5, bidirectional=bidirectional)
    host = model.init(seed=1, dtype="float32", backend=be.name, device=be.device)
    params = {k: Array(v, ns) for k, v in host.items()}
    rng = np.random.default_rng(0)

    def kernels(T: int, setting: Any) -> int:
        x, y = proxy.asarray(rng.integers(0, 5, (T, 3))), proxy.asarray(rng.integers(0, 5, (T, 3)))
        ns.clear()
        loss, grads, h_last = model.loss_and_grad(params, x, y, check_values=False,
                                                  remat=setting)  # fmt: skip
        assert all(isinstance(a, Array) for a in (loss, h_last, *grads.values()))
        assert ns.transfers == 0, "host-to-device copies inside the step"
        return ns.kernels()

    return kernels


def test_remat_never_syncs_and_its_kernels_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full BPTT: 6 T + F kernels. The replay adds 3 per recomputed step (product, sum,
    tanh), LEAF_KERNELS per segment beyond the first (its head, the gradient joining
    dS at its end, the sums of the gradients) and PIECE_KERNELS per advance piece, and
    REPLAY_FIXED once; a step that reads the host raises (the proxy)."""
    kernels = _proxy_kernels(monkeypatch)
    fixed = kernels(6, None) - 6 * 6
    assert kernels(12, None) == 6 * 12 + fixed
    for T, setting in [(6, 2), (12, 2), (12, 3), (12, 4), (12, "budget:15"), (16, "sqrt")]:
        p = plan(T, setting)
        leaves = sum(op[0] == "leaf" for op in p.ops)
        pieces = sum(-(-(op[2] - op[1]) // op[3]) for op in p.ops if op[0] == "advance")
        expected = (6 * T + fixed + 3 * (p.cost - T) + LEAF_KERNELS * (leaves - 1)
                    + PIECE_KERNELS * pieces + REPLAY_FIXED)  # fmt: skip
        assert kernels(T, setting) == expected, (T, setting)


def test_peak_memory_follows_the_plan() -> None:
    """tracemalloc sees NumPy's allocations: the step's peak under remat is a fraction of
    full BPTT's (benchmarks/remat_memory.py measures it at scale)."""
    import gc
    import tracemalloc

    rng = np.random.default_rng(0)
    model = bptt.RNN(16, 64, 16)
    params = model.init(seed=0, dtype="float64")
    x, y = rng.integers(0, 16, (400, 8)), rng.integers(0, 16, (400, 8))

    def peak(setting: Any) -> int:
        if setting is not None:
            plan(400, setting)  # the host's DP table (cached) is not the step's memory
        gc.collect()
        tracemalloc.start()
        before, _ = tracemalloc.get_traced_memory()
        out = model.loss_and_grad(params, x, y, check_values=False, remat=setting)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del out
        return top - before

    full = peak(None)
    assert peak("sqrt") < 0.2 * full and peak("budget:50") < 0.1 * full
    assert peak(f"budget:{plan(400, 'sqrt').peak}") < 1.1 * peak("sqrt")  # the same memory


def test_bidirectional_remat_never_syncs_and_its_kernels_grow_linearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The layerwise plan (bptt/math/remat_layerwise.py) on the proxy: no host read, no
    transfer, and at a fixed k a fixed number of kernels per step and per segment:
    the extra kernels over full BPTT grow linearly with T (T a multiple of k), by
    BIDIRECTIONAL_KERNELS_PER_STEP at k = 3 (two cells, ids, softmax: each cell's
    forward pass by segments, the head by segments and each cell's replayed pullback;
    measured 148, 382, 616 extra at T = 6, 12, 18)."""
    kernels = _proxy_kernels(monkeypatch, bidirectional=True)
    extra = [kernels(T, 3) - kernels(T, None) for T in (6, 12, 18)]
    assert extra[0] > 0 and extra[2] - extra[1] == extra[1] - extra[0], extra
    assert extra[1] - extra[0] == 6 * BIDIRECTIONAL_KERNELS_PER_STEP, extra


def test_bidirectional_peak_memory_drops_the_per_step_cache() -> None:
    """A bidirectional LSTM under remat keeps its layers' outputs and dL/dS (linear in
    T) but not the cells' per-step cache (gates, U x + b): measured 12% of full BPTT's
    peak here (docs/derivation.md, "Two directions")."""
    import gc
    import tracemalloc

    rng = np.random.default_rng(0)
    model = bptt.RNN(16, 64, 16, cell="lstm", bidirectional=True)
    params = model.init(seed=0, dtype="float64")
    x, y = rng.integers(0, 16, (400, 8)), rng.integers(0, 16, (400, 8))

    def peak(setting: Any) -> int:
        gc.collect()
        tracemalloc.start()
        before, _ = tracemalloc.get_traced_memory()
        out = model.loss_and_grad(params, x, y, check_values=False, remat=setting)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del out
        return top - before

    assert peak("sqrt") < 0.2 * peak(None)
