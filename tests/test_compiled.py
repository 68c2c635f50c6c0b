"""How the training step runs: ``jax.jit`` on JAX, a CUDA graph on CuPy / torch CUDA.

The proof, on a CPU, that the step can be captured as a CUDA graph: ``jax.jit``
traces it, which fails on any host conversion or value-dependent branch, and the
trace holds no host callback. The graph path's buffer plumbing (copy in, replay,
the new carry written into the static one) is tested with a stand-in graph on
NumPy; the real capture is a ``gpu`` test.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from conftest import Backend, jax_x64, load
from train_helpers import small_config, small_corpus

from bptt import backends
from bptt.execution.compiled import _GraphStep, _map_leaves, compile_step
from bptt.train import Trainer, TrainResult, make_train_step

NUMPY = backends.get_backend("numpy")


PAST_AN_EPOCH = -1  # steps: one epoch and two more (the hidden state reset between)


def _run(be: backends.Backend, compile: str, steps: int, **overrides) -> Trainer:
    config = small_config(eval_every=1000, log_every=1000, **overrides)
    trainer = Trainer.create(small_corpus(), config, backend=be, compile=compile)
    if steps == PAST_AN_EPOCH:
        steps = trainer.feed.streams.chunks + 2
    for _ in range(steps):
        trainer.advance()
    return trainer


def _assert_same_run(a: Trainer, b: Trainer, rtol: float) -> None:
    for key, value in a.params.items():
        np.testing.assert_allclose(a.backend.to_numpy(value), b.backend.to_numpy(b.params[key]),
                                   rtol=rtol, atol=rtol)  # fmt: skip
    np.testing.assert_allclose(a.backend.to_numpy(a.hidden), b.backend.to_numpy(b.hidden),
                               rtol=rtol, atol=rtol)  # fmt: skip


# ---- jax.jit ------------------------------------------------------------------------------


@pytest.fixture
def jax64():
    jax = pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    with jax_x64(True):
        yield jax


OPTIONS = {
    "adam": {},
    "dropout-decay": {"dropout": 0.2, "lr_decay": 0.5, "lr_decay_every": 3},
    "sgd-l2-wd": {"optimizer": "sgd", "momentum": 0.9, "l2": 1e-3, "weight_decay": 1e-3},
}


@pytest.mark.parametrize("options", list(OPTIONS))
def test_jit_step_equals_the_eager_step(jax64, options: str) -> None:
    """Past an epoch boundary (the hidden state reset), with the schedule and the
    dropout counter as traced values: one compiled step serves every step."""
    be = load(Backend.JAX)
    eager = _run(be, "none", PAST_AN_EPOCH, **OPTIONS[options])
    jitted = _run(be, "auto", PAST_AN_EPOCH, **OPTIONS[options])
    assert jitted.train_step.mode == "jit" and eager.train_step.mode == "none"
    assert jitted.state.epoch >= 1
    _assert_same_run(eager, jitted, rtol=1e-12)
    assert jitted.train_step.compile_seconds > 0
    assert jitted.train_step.step.jitted._cache_size() == 0  # compiled ahead, once


def test_jit_float32_without_x64() -> None:
    pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    with jax_x64(False):
        be = load(Backend.JAX_NO_X64)
        eager, jitted = _run(be, "none", 4, dtype="float32"), _run(be, "jit", 4, dtype="float32")
        _assert_same_run(eager, jitted, rtol=2e-5)


def test_jax_run_equals_numpy_and_its_checkpoint_resumes_there(jax64, tmp_path) -> None:
    be = load(Backend.JAX)
    jax_run = _run(be, "auto", 6)
    numpy_run = _run(NUMPY, "none", 6)
    _assert_same_run(numpy_run, jax_run, rtol=1e-12)
    jax_run.checkpoint_dir = tmp_path
    jax_run.save()
    from bptt.train.checkpoint import load_checkpoint

    on_numpy = Trainer.resume(load_checkpoint(tmp_path), small_corpus(), backend=NUMPY)
    on_jax = Trainer.resume(load_checkpoint(tmp_path), small_corpus(), backend=be)
    for t in (on_numpy, on_jax):
        for _ in range(3):
            t.advance()
    _assert_same_run(on_numpy, on_jax, rtol=1e-12)


def test_the_trace_has_no_host_callback_and_the_proof_can_fail(jax64) -> None:
    """Tracing succeeds (no host conversion, no branch on a value) and the traced
    program calls nothing back on the host; a step that reads a value cannot trace."""
    be = load(Backend.JAX)
    trainer = _run(be, "none", 0, dropout=0.1)
    x, y = trainer.feed.chunk(0)
    jaxpr = jax64.make_jaxpr(trainer.train_step.step)(trainer.state.carry, x, y)
    text = str(jaxpr)
    assert "callback" not in text and "debug" not in text
    assert "while" not in text and "cond" not in text  # a fixed program, no data-driven loop
    assert text.count("scan[") == 2  # the two recurrences, each one lax.scan of fixed length

    step = make_train_step(trainer.optimizer, trainer.state.layout, model=trainer.model)

    def reads_the_loss(carry, inputs, targets):
        out = step(carry, inputs, targets)
        if out[1] > 100:  # a value-dependent branch: a host sync on a GPU
            pass
        return out

    with pytest.raises(jax64.errors.TracerBoolConversionError):
        jax64.jit(reads_the_loss)(trainer.state.carry, x, y)


def test_a_jax_run_trains(jax64) -> None:
    be = load(Backend.JAX)
    config = small_config(eval_every=10, log_every=5)
    trainer = Trainer.create(small_corpus(), config, backend=be)
    result = trainer.run(steps=20)
    assert isinstance(result, TrainResult) and result.best_val < trainer.history["val_bpc"][0] + 1


# ---- the modes refused where they cannot run -------------------------------------------


@pytest.mark.parametrize(
    ("mode", "name", "fragment"),
    [
        ("jit", "numpy", "'jit' needs the jax backend"),
        ("cuda-graph", "numpy", "'cuda-graph' needs CuPy or torch on a CUDA device"),
        ("cuda-graph", "torch", "'cuda-graph' needs CuPy or torch on a CUDA device"),
        ("fast", "numpy", "'fast' is not one of"),
    ],
)
def test_a_mode_that_cannot_run_raises(mode: str, name: str, fragment: str) -> None:
    be = backends.get_backend(name)
    with pytest.raises(ValueError, match=fragment):
        compile_step(lambda c, x, y: (c, x, y), be, mode)


def test_auto_is_eager_off_jax() -> None:
    assert compile_step(lambda c, x, y: (c, x, y), NUMPY).mode == "none"


# ---- the CUDA-graph plumbing, with a stand-in graph -------------------------------------


class ReplayGraphs:
    """Stands in for CUDA stream capture on NumPy: ``capture`` keeps the body and
    ``replay`` runs it again, reading the static buffers as a graph would."""

    name = "stand-in"

    def __init__(self) -> None:
        self.captures = self.replays = 0

    def side_stream(self):
        import contextlib

        return contextlib.nullcontext()

    def clone(self, tree):
        return _map_leaves(lambda a: np.array(a, copy=True), tree)

    def copy(self, dst, src) -> None:
        np.copyto(dst, src)

    def capture(self, body):
        self.captures += 1
        return body

    def replay(self, graph) -> None:
        self.replays += 1
        graph()

    def synchronize(self) -> None:
        pass


def test_graph_step_plumbing_equals_eager() -> None:
    """Inputs copied into the static buffers, the new carry written into the static
    carry, a reset hidden state (a new array) copied in: the same run as eager."""
    eager = _run(NUMPY, "none", 0, dropout=0.2)
    graphed = _run(NUMPY, "none", 0, dropout=0.2)
    graphs = ReplayGraphs()
    compiled = compile_step(graphed.train_step.step, NUMPY, "none")
    compiled.mode, compiled.step = "cuda-graph", _GraphStep(compiled.step, graphs, compiled)
    graphed.train_step = compiled
    steps = eager.feed.streams.chunks + 2  # past an epoch boundary
    for _ in range(steps):
        eager.advance()
        graphed.advance()
    assert graphs.captures == 1 and graphs.replays == steps
    assert graphed.state.epoch >= 1
    assert graphed.state.carry.params is compiled.step.static[0].params  # the static buffers
    _assert_same_run(eager, graphed, rtol=0)


# ---- on a GPU -----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("which", [Backend.CUPY, Backend.TORCH_CUDA], ids=lambda b: b.id)
def test_cuda_graph_step_equals_eager(which: Backend) -> None:
    """Captured once, replayed: the same parameters as the eager step, dropout on the
    device included (a capture fails on any host sync or pageable transfer)."""
    be = load(which)
    eager = _run(be, "none", 12, dropout=0.2, dtype="float32")
    graphed = _run(be, "cuda-graph", 12, dropout=0.2, dtype="float32")
    assert graphed.train_step.mode == "cuda-graph" and graphed.train_step.compile_seconds > 0
    _assert_same_run(eager, graphed, rtol=1e-5)


@contextlib.contextmanager
def _no_device_sync(which: Backend):
    """Raise on any device synchronisation: CuPy's and torch's own detectors."""
    if which is Backend.CUPY:
        import cupyx

        with cupyx.allow_synchronize(False):
            yield
        return
    import torch

    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("which", [Backend.CUPY, Backend.TORCH_CUDA], ids=lambda b: b.id)
def test_gpu_training_steps_never_synchronise(which: Backend) -> None:
    """The eager step on a real GPU, dropout on: the libraries' own sync detectors
    stay silent for steps after the first (which compiles CuPy's kernels)."""
    be = load(which)
    trainer = _run(be, "none", 1, dropout=0.2, dtype="float32")
    with _no_device_sync(which):
        for _ in range(5):
            trainer.advance()
    be.synchronize()


@pytest.mark.gpu
def test_training_on_the_second_gpu_stays_there() -> None:
    """device=1 on a machine with two GPUs: every array of the run on GPU 1."""
    be = load(Backend.CUPY)
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU: multi-GPU placement needs two")
    be1 = backends.get_backend("cupy", 1)
    trainer = _run(be1, "none", 3, dtype="float32")
    trainer.validate()
    trainer.sample_text(10)
    leaves = [trainer.state.carry.params, trainer.state.carry.hidden]
    assert all(leaf.device.id == 1 for leaf in leaves), be
