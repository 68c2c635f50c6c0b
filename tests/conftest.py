"""Backends under test: one ``be`` fixture parametrised over every library and device.

array_api_strict's ``device1`` refuses conversion to NumPy and mixing with
other devices, as CuPy does: it is the CPU stand-in for a GPU. ``no_float64``
stands in for a device without float64. cupy cases are marked ``gpu`` and skip
with the detection reason, or fail under ``BPTT_REQUIRE_GPU=1``.
"""

from __future__ import annotations

import contextlib
import os
from enum import Enum

import numpy as np
import pytest

from bptt import backends

# The oldest standard version the code claims: run array_api_strict at it.
ARRAY_API_VERSION = "2023.12"


class Backend(Enum):
    NUMPY = ("numpy", None)
    STRICT = ("array_api_strict", None)
    STRICT_DEVICE1 = ("array_api_strict", "device1")
    STRICT_NO_FLOAT64 = ("array_api_strict", "no_float64")
    TORCH = ("torch", "cpu")
    JAX = ("jax", "cpu")  # with x64 on for the test (float64 available)
    JAX_NO_X64 = ("jax", "cpu:no_x64")  # x64 off: float32 only, like no_float64
    CUPY = ("cupy", 0)
    TORCH_CUDA = ("torch", "cuda")

    @property
    def id(self) -> str:
        name, device = self.value
        if self is Backend.JAX_NO_X64:
            return "jax:no_x64"
        return name if device in (None, "cpu", 0) else f"{name}:{device}"


GPU_BACKENDS = (Backend.CUPY, Backend.TORCH_CUDA)


def pytest_configure(config: pytest.Config) -> None:
    try:
        import array_api_strict
    except ImportError:
        return
    array_api_strict.set_array_api_strict_flags(api_version=ARRAY_API_VERSION)


def _gpu_reason(b: Backend) -> str:
    if b is Backend.CUPY:
        status = backends._cupy_status()
    else:
        status = backends._torch_cuda_status()
    return status.reason


def load(b: Backend) -> backends.Backend:
    """The bptt backend for a test parameter, skipping (or failing) with the reason."""
    name, device = b.value
    if b in GPU_BACKENDS:
        reason = _gpu_reason(b)
        if reason:
            if os.environ.get("BPTT_REQUIRE_GPU") == "1":
                pytest.fail(f"BPTT_REQUIRE_GPU=1 but {b.id} is not usable: {reason}")
            pytest.skip(f"{b.id} not usable: {reason}")
    status = {s.name: s for s in backends.list_backends()}[name]
    if not status.usable:
        pytest.skip(f"{name} not installed: {status.reason}")
    return backends.get_backend(name, "cpu" if b is Backend.JAX_NO_X64 else device)


@contextlib.contextmanager
def jax_x64(on: bool):
    """JAX's x64 switch (process-wide) set for one test, then put back."""
    import jax

    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", on)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


def _scoped(b: Backend):
    if b not in (Backend.JAX, Backend.JAX_NO_X64):
        return contextlib.nullcontext()
    status = {s.name: s for s in backends.list_backends()}["jax"]
    return jax_x64(b is Backend.JAX) if status.usable else contextlib.nullcontext()


def _params(members):
    return [
        pytest.param(b, id=b.id, marks=[pytest.mark.gpu] if b in GPU_BACKENDS else [])
        for b in members
    ]


@pytest.fixture(params=_params(Backend))
def be(request: pytest.FixtureRequest):
    """Every backend and device, float32-only devices included."""
    with _scoped(request.param):
        yield load(request.param)


FLOAT32_ONLY = (Backend.STRICT_NO_FLOAT64, Backend.JAX_NO_X64)


@pytest.fixture(params=_params([b for b in Backend if b not in FLOAT32_ONLY]))
def be64(request: pytest.FixtureRequest):
    """Every backend and device that has float64."""
    with _scoped(request.param):
        yield load(request.param)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
