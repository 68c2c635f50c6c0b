"""The training step, validation and sampling never synchronise with the device, move
no host data per step, and cost a fixed budget of kernels.

No GPU here, so this is proved on the counting proxy (benchmarks/proxy.py) over
array_api_strict's ``device1``: a host conversion raises HostSync, an operation
that synchronises on CuPy or torch CUDA (mask indexing, ``nonzero``, ``clip``
through compat, one-argument ``where``, ``unique_*``) raises SyncProne, and every
``asarray`` of host data is counted as a transfer.

The budget (README, "The GPU path"): a training step at the default settings
(Adam, clipping, float32, no dropout) launches exactly ``6 T + 62`` kernels
-- per time step 3 in the forward recurrence (product, sum, tanh) and 3 in the
backward one (product, sum, product by tanh') -- plus 3 views per time step; each
recurrence stacks its steps once and joins them to its first or last (peeled) step once.
Dropout adds a constant (the device generator), whatever T.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from proxy import Array, HostSync, Namespace, SyncProne

import bptt
from bptt import backends, optim
from bptt.evaluation import diagnostics
from bptt.math.flat import Layout
from bptt.text.sample import sample_ids
from bptt.text.validation import evaluate
from bptt.train import TrainCarry, TrainConfig, layout_validation, make_train_step

STRICT = "array_api_strict"
KERNELS_PER_STEP, VIEWS_PER_STEP, KERNELS_FIXED = 6, 3, 62
B, M, D = 3, 5, 4
MODEL = bptt.RNN(M, D, M)
TO_NUMPY = backends.Backend.to_numpy  # before the fixture refuses it


@dataclass
class ProxyBackend:
    """A Backend stand-in whose namespace is the proxy: host reads and transfers counted."""

    be: backends.Backend
    ns: Namespace
    reads: int = 0

    name = property(lambda self: self.be.name)
    xp = property(lambda self: self.ns)
    device = property(lambda self: self.be.device)
    integer = property(lambda self: self.be.integer)

    def asarray(self, x: Any, *, dtype: Any = None) -> Array:
        self.ns.transfers += 1
        return Array(self.be.asarray(x, dtype=dtype), self.ns)

    def to_numpy(self, x: Array) -> np.ndarray:
        self.reads += 1
        return TO_NUMPY(self.be, x._x)

    def activate(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()


@pytest.fixture
def pbe(monkeypatch: pytest.MonkeyPatch) -> ProxyBackend:
    be = backends.get_backend(STRICT, "device1")
    proxy = ProxyBackend(be, Namespace(be.xp))
    monkeypatch.setattr(backends, "backend_of", lambda x: proxy)
    monkeypatch.setattr(backends.Backend, "to_numpy", _refuse_to_numpy)
    return proxy


def _refuse_to_numpy(self: Any, x: Any) -> Any:
    raise HostSync("Backend.to_numpy inside a step")


def _params(pbe: ProxyBackend, dtype: str, model: bptt.RNN = MODEL) -> dict[str, Array]:
    host = model.init(dtype=dtype, seed=1, backend=STRICT, device="device1")
    return {k: Array(v, pbe.ns) for k, v in host.items()}


@dataclass
class Counts:
    kernels: int
    views: int
    transfers: int
    dtypes: set[str]


def train_steps(pbe: ProxyBackend, T: int, *, dtype: str = "float32", steps: int = 2,
                model: bptt.RNN = MODEL, **options: Any) -> Counts:  # fmt: skip
    """``steps`` training steps on proxy arrays; the counts are those of the last one."""
    ns, xp = pbe.ns, pbe.ns
    config = TrainConfig(hidden=D, batch=B, seq_len=T, dtype=dtype, **options)
    params = _params(pbe, dtype, model)
    layout = Layout.of(params)
    opt = config.make_optimizer()
    flat = layout.flatten(params, xp)
    hidden = xp.zeros(model.carry_shape(B), dtype=flat.dtype, device=pbe.device)
    counter = xp.zeros((), dtype=pbe.integer, device=pbe.device)
    carry = TrainCarry(flat, opt.init(flat), hidden, counter)
    step = make_train_step(opt, layout, dropout=config.dropout, seed=config.seed, model=model)
    rng = np.random.default_rng(0)
    x = pbe.asarray(rng.integers(0, M, (T, B)))
    y = pbe.asarray(rng.integers(0, M, (T, B)))
    for _ in range(steps):
        ns.clear()
        carry, loss, norm = step(carry, x, y)
    assert all(isinstance(a, Array) for a in (loss, norm, carry.params, carry.hidden))
    return Counts(ns.kernels(), ns.views(), ns.transfers, set(ns.dtypes))


VARIANTS = {
    "default": {},
    "dropout": {"dropout": 0.3},
    "sgd-momentum-l2": {"optimizer": "sgd", "momentum": 0.9, "l2": 1e-4},
    "rmsprop-decay": {"optimizer": "rmsprop", "lr_decay": 0.9, "weight_decay": 1e-3},
    "adagrad-no-clip": {"optimizer": "adagrad", "clip": 0.0},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_step_never_syncs_and_moves_no_host_data(pbe: ProxyBackend, variant: str) -> None:
    ns = train_steps(pbe, 6, **VARIANTS[variant])
    assert ns.kernels > 0
    assert ns.transfers == 0, "host-to-device copies in a steady-state step"
    assert pbe.reads == 0


@pytest.mark.parametrize("variant", ["masked", "sigmoid", "dense"])
def test_loss_and_grad_variants_never_sync(pbe: ProxyBackend, variant: str) -> None:
    T, C, rng = 4, 6, np.random.default_rng(0)
    host = bptt.init_params(M, D, C, dtype="float64", seed=1, backend=STRICT, device="device1")
    params = {k: Array(v, pbe.ns) for k, v in host.items()}
    x, y = pbe.asarray(rng.integers(0, M, (T, B))), pbe.asarray(rng.integers(0, C, (T, B)))
    kw: dict[str, Any] = {}
    if variant == "masked":
        kw = dict(mask=pbe.asarray(rng.random((T, B)) < 0.8), h0=pbe.asarray(rng.random((B, D))))
    elif variant == "sigmoid":
        kw, y = dict(head="sigmoid", reduction="sum"), pbe.asarray(rng.random((T, B, C)) < 0.5)
    else:
        x = pbe.asarray(rng.standard_normal((T, B, M)))
    pbe.ns.clear()
    _, grads, _ = bptt.loss_and_grad(params, x, y, check_values=False, **kw)
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(1e-2))
    updates, _ = opt.update(grads, opt.init(params), params)
    optim.apply_updates(params, updates)
    assert pbe.ns.transfers == 0 and pbe.reads == 0


def test_kernel_budget_is_6T_plus_62(pbe: ProxyBackend) -> None:
    """Exactly linear in T, 6 kernels and 3 views per time step, 62 kernels besides."""
    counts = {T: train_steps(pbe, T) for T in (2, 3, 5, 9)}
    kernels = {T: ns.kernels for T, ns in counts.items()}
    views = {T: ns.views for T, ns in counts.items()}
    assert all(kernels[T] == KERNELS_PER_STEP * T + KERNELS_FIXED for T in counts), kernels
    assert all(views[T] - views[2] == VIEWS_PER_STEP * (T - 2) for T in counts), views


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_steps_never_sync_and_spend_their_cells_budget(pbe: ProxyBackend, cell) -> None:
    """A GRU or LSTM training step (dropout on): no host read or transfer, no float64,
    and exactly the cell's kernels per time step (its forward and backward step bodies,
    bptt.math.gru / bptt.math.lstm ``KERNELS_PER_STEP``) on top of a constant."""
    module = {"gru": bptt.math.gru, "lstm": bptt.math.lstm}[cell]
    model = bptt.RNN(M, D, M, cell=cell)
    counts = {T: train_steps(pbe, T, model=model, dropout=0.3) for T in (2, 3, 5, 9)}
    per_step = module.KERNELS_PER_STEP["forward"] + module.KERNELS_PER_STEP["backward"]
    fixed = counts[2].kernels - per_step * 2
    assert all(c.kernels == per_step * T + fixed for T, c in counts.items()), counts
    assert all(c.transfers == 0 and "float64" not in c.dtypes for c in counts.values()), counts
    assert pbe.reads == 0


def test_dropout_adds_a_constant(pbe: ProxyBackend) -> None:
    extra = {T: train_steps(pbe, T, dropout=0.3).kernels - train_steps(pbe, T).kernels
             for T in (2, 7)}  # fmt: skip
    assert extra[2] == extra[7] <= 40, extra


@pytest.mark.parametrize("variant", ["default", "dropout"])
def test_float32_step_never_makes_float64(pbe: ProxyBackend, variant: str) -> None:
    ns = train_steps(pbe, 4, **VARIANTS[variant])
    assert "float64" not in ns.dtypes and "float32" in ns.dtypes, ns.dtypes


def test_validation_reads_once_and_moves_nothing(pbe: ProxyBackend) -> None:
    ids = np.random.default_rng(0).integers(0, M, 200)
    val = layout_validation(ids, streams=4, warmup=10, backend=pbe, dtype="float32")
    params = _params(pbe, "float32")
    pbe.ns.clear()
    bpc = evaluate(MODEL, params, val, chunk=16)  # several chunks
    assert np.isfinite(bpc) and pbe.reads == 1 and pbe.ns.transfers == 0


def test_dynamic_evaluation_reads_once_and_moves_nothing_per_segment(pbe: ProxyBackend) -> None:
    """A dynamic walk: no sync and no host copy per segment, one read at the end, and a
    fixed number of kernels per segment beyond its loss_and_grad."""
    from bptt.evaluation.dynamic import Update, gradient_rms, layout_walk, score_dynamic

    params = _params(pbe, "float32")
    rng = np.random.default_rng(0)
    rms = gradient_rms(params, rng.integers(0, M, 200), seq_len=4, batch=3, model=MODEL)
    kernels, moved = {}, {}
    for segments in (3, 6):
        walk = layout_walk(rng.integers(0, M, 4 * segments + 1), seq_len=4, backend=pbe)
        pbe.ns.clear()
        pbe.reads = 0
        score = score_dynamic(params, walk, Update("rms", 1e-3, 0.01, 1e-4), rms=rms, model=MODEL)
        assert np.isfinite(score.bpc) and pbe.reads == 1
        kernels[segments], moved[segments] = pbe.ns.kernels(), pbe.ns.transfers
    assert moved[3] == moved[6] <= 3, moved  # the rule's scalars, made once
    x, h = pbe.asarray(rng.integers(0, M, (4, 1))), pbe.asarray(rng.random((1, D)), dtype="float32")
    pbe.ns.clear()
    MODEL.loss_and_grad(params, x, x, h0=h, reduction="sum", check_values=False)
    per_segment = (kernels[6] - kernels[3]) / 3
    # the segment's loss_and_grad, then the rule: concat, / n, * scale, -, -, * decay, +
    assert per_segment == pbe.ns.kernels() + 7, (kernels, pbe.ns.kernels())


@pytest.mark.parametrize("temperature", [1.0, 1e-300, 1e300])  # also the greedy/uniform limits
def test_sampling_reads_once_whatever_the_length(pbe: ProxyBackend, temperature: float) -> None:
    params = _params(pbe, "float32")
    prime = pbe.asarray(np.asarray([1, 2, 3]))
    moved = {}
    for length in (3, 12):
        pbe.ns.clear()
        pbe.reads = 0
        out = sample_ids(MODEL, params, prime, length=length, temperature=temperature, seed=0,
                         check_values=False)  # fmt: skip
        assert out.shape == (length,) and pbe.reads == 1
        moved[length] = pbe.ns.transfers
    assert moved[3] == moved[12] <= 2  # the uniforms and one scalar, made once


@pytest.mark.parametrize(
    "action",
    [float, bool, int, lambda a: a.item(), lambda a: a.tolist(), np.asarray],
    ids=["float", "bool", "int", "item", "tolist", "numpy"],
)
def test_the_proxy_catches_host_conversions(pbe: ProxyBackend, action: Any) -> None:
    a = pbe.asarray(np.asarray([1.0, 2.0]))
    with pytest.raises(HostSync):
        action(pbe.ns.sum(a))


@pytest.mark.parametrize(
    "action",
    [
        lambda xp, a: a[a > 1.0],
        lambda xp, a: a.__setitem__(a > 1.0, 0.0),
        lambda xp, a: xp.nonzero(a),
        lambda xp, a: xp.unique_values(a),
        lambda xp, a: xp.where(a > 1.0),
        lambda xp, a: xp.clip(a, max=1.0),
    ],
    ids=["mask-getitem", "mask-setitem", "nonzero", "unique", "where-1", "clip"],
)
def test_the_proxy_catches_sync_prone_operations(pbe: ProxyBackend, action: Any) -> None:
    a = pbe.asarray(np.asarray([1.0, 2.0]))
    with pytest.raises(SyncProne):
        action(pbe.ns, a)


def test_the_proxy_counts_transfers_and_kernels(pbe: ProxyBackend) -> None:
    xp = pbe.ns
    pbe.ns.clear()
    a = xp.asarray([1.0, 2.0], device=pbe.device)  # host list -> device
    b = xp.reshape(a * 2.0 + 1.0, (2, 1))
    assert pbe.ns.transfers == 1 and pbe.ns.kernels() == 3 and pbe.ns.views() == 1
    assert isinstance(b, Array)
    m = pbe.asarray(np.ones((2, 3)))
    pbe.ns.clear()
    xp.reshape(m.T, (6,))  # .T is a view; reshaping the transposed array copies
    assert pbe.ns.views() == 1 and pbe.ns.kernels() == 1


def test_arrays_stay_on_the_parameters_device() -> None:
    """Parameters on device2 (creation functions default to another device): everything
    the library creates for them lands on device2; array_api_strict refuses mixing."""
    be = backends.get_backend(STRICT, "device2")
    params = bptt.init_params(M, D, M, dtype="float64", seed=1, backend=STRICT, device="device2")
    rng = np.random.default_rng(0)
    x, y = be.asarray(rng.integers(0, M, (5, B))), be.asarray(rng.integers(0, M, (5, B)))
    flow = diagnostics.gradient_flow(MODEL, params, x, y)
    assert flow.norms.device == be.device
    state = optim.adam(1e-2).init(params)
    assert all(leaf.device == be.device for leaf in optim.state_arrays(state).values())
    val = layout_validation(rng.integers(0, M, 100), streams=3, warmup=5, backend=be,
                            dtype="float64")  # fmt: skip
    assert np.isfinite(evaluate(MODEL, params, val))
    out = sample_ids(MODEL, params, be.asarray(np.asarray([0, 1])), length=5, seed=0)
    assert out.shape == (5,)


def test_bptt_info_states_the_budget_this_file_holds(capsys: pytest.CaptureFixture[str]) -> None:
    from bptt import cli

    assert cli.main(["info"]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("training step:")]
    assert f"{KERNELS_PER_STEP} T + {KERNELS_FIXED} " in line[0]
    assert f"{KERNELS_PER_STEP * 100 + KERNELS_FIXED} at T = 100" in line[0]
