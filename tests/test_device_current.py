"""Work runs with the arrays' device current: CuPy launches kernels on the *current*
GPU, so a run on ``cuda:1`` must make device 1 current and never touch GPU 0.

No GPU here: a recording context manager stands in for ``cupy.cuda.Device``.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
from train_helpers import small_trainer

import bptt
import bptt.train
from bptt import backends
from bptt.api import calls as api
from bptt.api import pullback
from bptt.math import layers
from bptt.text import sample as sample_module


class RecordingDevice:
    """Stands in for cupy.cuda.Device(1): records whether it is current."""

    def __init__(self) -> None:
        self.depth = 0
        self.entered = 0

    def __enter__(self) -> RecordingDevice:
        self.depth += 1
        self.entered += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1


def test_device_context_of_a_cupy_array() -> None:
    device = RecordingDevice()
    FakeCupyArray = type("ndarray", (), {"__module__": "cupy._core.core", "device": device})
    assert backends.device_context(FakeCupyArray()) is device
    assert isinstance(backends.device_context(np.zeros(2)), contextlib.nullcontext)


def test_public_functions_run_on_the_parameters_device(monkeypatch: pytest.MonkeyPatch) -> None:
    device = RecordingDevice()
    seen = []
    monkeypatch.setattr(api, "device_context", lambda x: device)  # imported by name
    monkeypatch.setattr(pullback, "device_context", lambda x: device)

    def recording(real):
        def spy(*args, **kwargs):
            seen.append(device.depth)
            return real(*args, **kwargs)

        return spy

    monkeypatch.setattr(layers, "forward", recording(layers.forward))
    monkeypatch.setattr(layers, "backward", recording(layers.backward))
    params = bptt.init_params(4, 3, 4, dtype="float64")
    ids = np.zeros((3, 2), dtype=np.int64)
    bptt.forward(params, ids)
    bptt.loss_and_grad(params, ids, ids)
    bptt.gradcheck(params, ids, ids, max_entries=1)
    _, pull = bptt.vjp(params, ids)
    pull(np.ones((3, 2, 4)))
    assert len(seen) > 5 and all(depth == 1 for depth in seen)  # every pass ran inside
    assert device.depth == 0


def test_backend_activate() -> None:
    device = RecordingDevice()
    numpy_be = backends.get_backend("numpy")
    cupy_like = dataclasses.replace(numpy_be, name="cupy", device=device)
    assert cupy_like.activate() is device
    assert isinstance(numpy_be.activate(), contextlib.nullcontext)
    jax_like = dataclasses.replace(numpy_be, name="jax", device="cpu")  # not a jax.Device
    assert isinstance(jax_like.activate(), contextlib.nullcontext)


def test_training_and_sampling_run_inside_activate(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """Trainer.create, Trainer.run and sampling make the run's device current."""
    device = RecordingDevice()
    inside = []
    monkeypatch.setattr(backends.Backend, "activate", lambda self: device)
    real_step = bptt.train.Trainer.advance

    def recording_step(self):
        inside.append(device.depth)
        return real_step(self)

    monkeypatch.setattr(bptt.train.Trainer, "advance", recording_step)
    be = backends.get_backend("numpy")
    trainer = small_trainer(be, tmp_path)
    created = device.entered
    assert created >= 1
    trainer.run(steps=3)
    assert device.entered > created
    assert inside == [1, 1, 1]  # every training step ran with the device current
    before = device.entered
    sample_module.sample_ids(trainer.model, trainer.params, be.asarray(np.array([1])), length=3)
    assert device.entered > before
    assert device.depth == 0
