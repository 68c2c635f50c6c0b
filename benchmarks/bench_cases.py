"""The contenders of ``bench_step.py``: one training step of each, at one size and dtype.

A step is forward + backward for the softmax head, token-id inputs, mean loss,
biases on; the optimizer update (global-norm clip + Adam) is a second callable,
timed separately where a contender has one.

- ``bptt``: :func:`bptt.loss_and_grad` on NumPy (``schedule`` as given: ``auto``,
  or ``$BPTT_SCHEDULE``), or on another backend (``bptt[torch]``, ...);
- ``numpy-only``: the NumPy-only yardstick (``numpy_variant.py``);
- ``torch``: ``torch.nn.RNN(tanh)`` + ``Linear`` + ``CrossEntropyLoss``, autograd;
- ``jax``: a hand-written ``lax.scan`` cell, ``jax.value_and_grad`` under ``jax.jit``;
- ``bptt[jax.jit]``: bptt's own code traced by ``jax.jit`` on ``jax.numpy`` arrays.

torch, jax and cupy are imported only when a contender needs them. The JAX
contenders run every call inside ``jax.enable_x64(True)`` with explicit dtypes
(float32 stays float32; bptt's head indexes with int64), so the process-wide
x64 switch is untouched outside their calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from bench_timing import Case, time_one_call, traced_peak

import bptt
from bptt import backends, optim
from bptt.execution import schedules
from bptt.host import malloc

__all__ = [
    "SIZES",
    "Size",
    "bptt_case",
    "gemm_case",
    "gemm_rate",
    "jax_bptt_case",
    "jax_case",
    "numpy_variant_case",
    "parse_size",
    "resolve_torch_device",
    "torch_case",
]


class Size(NamedTuple):
    B: int
    T: int
    D: int
    M: int
    C: int

    @property
    def flops(self) -> int:
        """GEMM FLOPs of one step in the gather formulation: 6 T B D (D + C)."""
        return 6 * self.T * self.B * self.D * (self.D + self.C)


SIZES = {
    "S1": Size(B=32, T=25, D=100, M=65, C=65),
    "S2": Size(B=64, T=100, D=256, M=128, C=128),
    "S3": Size(B=128, T=200, D=512, M=128, C=128),
}


def parse_size(text: str) -> tuple[str, Size]:
    """'S2', or a custom 'BxTxDxMxC' such as '4x5x8x6x6'."""
    if text in SIZES:
        return text, SIZES[text]
    try:
        size = Size(*(int(v) for v in text.split("x")))
    except (TypeError, ValueError):
        size = None
    if size is None or min(size) < 1:
        raise ValueError(
            f"size: expected one of {list(SIZES)} or BxTxDxMxC of positive integers; got {text!r}"
        ) from None
    return text, size


def data(size: Size, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (T, B) and targets (T, B), int64, on the host."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, size.M, (size.T, size.B)), rng.integers(0, size.C, (size.T, size.B))


def _optimizer() -> optim.GradientTransformation:
    return optim.chain(optim.clip_by_global_norm(5.0), optim.adam(1e-3))


def bptt_case(
    size: Size, dtype: str, backend: str, device: Any, *, schedule: str | None = None, seed: int = 0
) -> Case:
    """``bptt.loss_and_grad`` through the array-API code on ``backend``."""
    be = backends.get_backend(backend, device)
    params = bptt.init_params(
        size.M, size.D, size.C, dtype=dtype, seed=seed, backend=be.name, device=be.device
    )
    x, y = (be.asarray(a) for a in data(size, seed))
    itemsize = np.dtype(dtype).itemsize
    chosen, _ = schedules.resolve(schedule, be.xp, size.T, size.B, size.D, itemsize)
    step = _waiting(
        be, lambda: bptt.loss_and_grad(params, x, y, check_values=False, schedule=schedule)
    )
    first = time_one_call(step, be.synchronize)
    grads = step()[1]
    opt = _optimizer()
    with be.activate():  # CuPy: the optimizer's work runs on this GPU, not the current one
        state = opt.init(params)

    def one_update() -> Any:
        with be.activate():
            updates, _ = opt.update(grads, state, params)
            return optim.apply_updates(params, updates)

    update = _waiting(be, one_update)

    peak: Callable[[], int | None] = lambda: None  # noqa: E731
    if be.name in ("numpy", "array_api_strict"):
        peak = lambda: traced_peak(step)  # noqa: E731
    elif be.name == "cupy":
        peak = _cupy_peak(step)
    elif be.name == "torch" and be.device.type == "cuda":
        peak = _torch_cuda_peak(step, be.device)
    where = be.name if device is None else f"{be.name}:{device}"
    label = "bptt" if be.name == "numpy" else f"bptt[{where}]"
    return Case(label, step, be.synchronize, peak, update, schedule=chosen, first_call_s=first)


def numpy_variant_case(size: Size, dtype: str, seed: int = 0) -> Case:
    """The NumPy-only yardstick (``numpy_variant.py``)."""
    import numpy_variant as nv

    params = bptt.init_params(size.M, size.D, size.C, dtype=dtype, seed=seed, backend="numpy")
    x, y = data(size, seed)
    step = lambda: nv.loss_and_grad(params, x, y)  # noqa: E731
    first = time_one_call(step)
    return Case(
        "numpy-only",
        step,
        peak_bytes=lambda: traced_peak(step, nv.clear_buffers),
        first_call_s=first,
    )


def resolve_torch_device(choice: str, on_gpu: bool) -> tuple[str | None, str | None]:
    """``(torch device or None to skip torch, a note for the output or None)``.

    ``choice``: ``cpu``, ``cuda[:N]``, ``none``, or ``auto`` (CUDA when bptt runs on a
    GPU, else the CPU). A CUDA device that this torch cannot use (a CPU-only build,
    no GPU) falls back to the CPU with a note, instead of failing later; torch not
    installed skips the column with a note.
    """
    if choice == "none":
        return None, None
    try:
        import torch
    except ImportError:
        return None, "torch is not installed: no torch column"
    wanted = ("cuda" if on_gpu else "cpu") if choice == "auto" else choice
    if not wanted.startswith("cuda"):
        return wanted, None
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return "cpu", (
            f"torch {torch.__version__} ({build}) cannot use {wanted!r}: "
            "the torch column runs on the CPU"
        )
    return wanted, None


def torch_case(size: Size, dtype: str, device: str, seed: int = 0) -> Case:
    """torch.nn.RNN(tanh) + Linear + CrossEntropyLoss + backward, one-hot inputs made once."""
    import torch

    torch.manual_seed(seed)
    dev, tdt = torch.device(device), getattr(torch, dtype)
    rnn = torch.nn.RNN(size.M, size.D, nonlinearity="tanh").to(dev, tdt)
    lin = torch.nn.Linear(size.D, size.C).to(dev, tdt)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = (torch.as_tensor(a, device=dev) for a in data(size, seed))
    X = torch.nn.functional.one_hot(x, size.M).to(tdt)  # (T, B, M), outside the timing
    Y = y.reshape(-1)
    params = [*rnn.parameters(), *lin.parameters()]

    def step() -> Any:
        for p in params:
            p.grad = None
        out, _ = rnn(X)
        loss = loss_fn(lin(out).reshape(-1, size.C), Y)
        loss.backward()
        return loss

    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    first = time_one_call(step, sync)
    opt = torch.optim.Adam(params, lr=1e-3)

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    peak = _torch_cuda_peak(step, dev) if dev.type == "cuda" else (lambda: None)
    label = "torch" if dev.type == "cpu" else f"torch[{dev}]"
    return Case(label, step, sync, peak, update, first_call_s=first)


def _x64() -> contextlib.AbstractContextManager[Any]:
    """JAX's x64 mode on while the block runs: ``jax.enable_x64(True)`` (older JAX:
    ``jax.experimental.enable_x64()``); the process-wide switch is left as it was."""
    import jax

    enable = getattr(jax, "enable_x64", None)
    if enable is None:
        from jax.experimental import enable_x64 as enable
    return enable(True)


def _jax_inputs(size: Size, dtype: str, seed: int) -> tuple[dict[str, Any], Any, Any]:
    """bptt's initial parameters and the data as ``jax.numpy`` arrays of explicit dtypes."""
    import jax.numpy as jnp

    params = bptt.init_params(size.M, size.D, size.C, dtype=dtype, seed=seed, backend="numpy")
    p = {k: jnp.asarray(v, dtype=getattr(jnp, dtype)) for k, v in params.items()}
    x, y = (jnp.asarray(a, dtype=jnp.int32) for a in data(size, seed))
    return p, x, y


def _jax_case(name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> Case:
    """A jitted ``fn(*args)``: compiled by the first call (timed), then each call waits
    for its own result (JAX dispatches asynchronously)."""
    import jax

    def step() -> Any:
        with _x64():
            return jax.block_until_ready(fn(*args))

    first = time_one_call(step)
    return Case(name, step, first_call_s=first)


def jax_case(size: Size, dtype: str, seed: int = 0) -> Case:
    """lax.scan + value_and_grad under jit (raises ImportError without jax)."""
    import jax
    import jax.numpy as jnp

    with _x64():
        p, x, y = _jax_inputs(size, dtype, seed)

    def loss(p: dict[str, Any], x: Any, y: Any) -> Any:
        def cell(s: Any, ids: Any) -> tuple[Any, Any]:
            s = jnp.tanh(p["U"].T[ids] + s @ p["W"].T + p["b"])
            return s, s

        _, S = jax.lax.scan(cell, jnp.zeros((size.B, size.D), p["W"].dtype), x)
        logits = S @ p["V"].T + p["c"]  # (T, B, C)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))

    return _jax_case("jax", jax.jit(jax.value_and_grad(loss)), (p, x, y))


def jax_bptt_case(size: Size, dtype: str, seed: int = 0, schedule: str = "auto") -> Case:
    """bptt's own ``loss_and_grad`` traced and compiled by ``jax.jit`` (raises ImportError
    without jax, and whatever tracing raises when bptt's code cannot be traced):
    ``schedule="auto"`` runs each recurrence as one ``lax.scan``, ``"unrolled"`` as T
    copies of the step body."""
    import jax
    import jax.numpy as jnp

    with _x64():
        p, x, y = _jax_inputs(size, dtype, seed)
        h0 = jnp.zeros((size.B, size.D), dtype=p["W"].dtype)

    # "auto" ("scan" on JAX) or "unrolled", whatever $BPTT_SCHEDULE forces on NumPy
    def grads(p: dict[str, Any], x: Any, y: Any, h0: Any) -> Any:
        return bptt.loss_and_grad(p, x, y, h0=h0, check_values=False, schedule=schedule)

    fn = jax.jit(grads)
    label = "bptt[jax.jit]" if schedule == "auto" else f"bptt[jax.jit,{schedule}]"
    case = _jax_case(label, fn, (p, x, y, h0))
    itemsize = np.dtype(dtype).itemsize
    case.schedule, _ = schedules.resolve(schedule, jnp, size.T, size.B, size.D, itemsize)
    return case


def _cupy_peak(step: Callable[[], Any]) -> Callable[[], int]:
    def peak() -> int:
        import cupy

        class Peak(cupy.cuda.MemoryHook):
            name = "bptt-peak"
            now = top = 0

            def malloc_postprocess(self, **kw: Any) -> None:
                self.now += kw["mem_size"]
                self.top = max(self.top, self.now)

            def free_postprocess(self, **kw: Any) -> None:
                self.now -= kw["mem_size"]

        hook = Peak()
        with hook:
            step()
            cupy.cuda.Device().synchronize()
        return hook.top

    return peak


def _torch_cuda_peak(step: Callable[[], Any], device: Any) -> Callable[[], int]:
    def peak() -> int:
        import torch

        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base

    return peak


MALLOC_MODES = ("keep", "tune", "default")


def set_malloc(mode: str) -> bool:
    """glibc's malloc for the whole process, as ``--malloc`` names it: ``keep``
    (:func:`bptt.host.malloc.keep_large_blocks`, before JAX starts its threads), ``tune``
    (:func:`bptt.host.malloc.tune_malloc`) or ``default`` (glibc's own: False). True if
    the setting took effect."""
    setting = {"keep": malloc.keep_large_blocks, "tune": malloc.tune_malloc}.get(mode)
    return setting() if setting else False


def _waiting(be: backends.Backend, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` that returns once its result is computed.

    ``be.synchronize`` cannot wait on JAX, which has no device-wide barrier: a JAX
    call returns at dispatch, so an unwaited one would time the dispatch alone --
    and size its blocks from it (a 2048-square matmul "took" microseconds, so a
    0.3 s block held millions of them and the benchmark never printed a row).
    """
    if be.name != "jax":
        return fn
    import jax

    return lambda: jax.block_until_ready(fn())


def _square(backend: str, device: Any, dtype: str, n: int) -> tuple[backends.Backend, Any, Any]:
    be = backends.get_backend(backend, device)
    rng = np.random.default_rng(0)
    a, b = (be.asarray(rng.standard_normal((n, n)), dtype=dtype) for _ in range(2))
    return be, a, b


def gemm_case(backend: str, device: Any, dtype: str, n: int) -> Case:
    """The large square matmul as one more contender: timed in the same blocks."""
    be, a, b = _square(backend, device, dtype, n)
    return Case("gemm", _waiting(be, lambda: a @ b), be.synchronize)


def gemm_rate(backend: str, device: Any, dtype: str, n: int = 2048, reps: int = 7) -> float:
    """FLOP/s of an (n, n) @ (n, n) product on ``backend``: the best of ``reps``.

    The best, not the median: it estimates what the machine can do, so that a busy
    moment lowers no floor (the fraction of the floor reached stays conservative).
    """
    be, a, b = _square(backend, device, dtype, n)
    product = _waiting(be, lambda: a @ b)
    with be.activate():
        time_one_call(product, be.synchronize)  # warm-up
        best = min(time_one_call(product, be.synchronize) for _ in range(reps))
    return 2 * n**3 / best
