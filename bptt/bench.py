"""Timing one training step against PyTorch (and JAX): the machinery behind ``bptt bench``.

A step is forward + backward for the softmax head, token-id inputs, mean loss,
biases on (``loss_and_grad(..., check_values=False)``); the optimizer update
(global-norm clip + Adam) is timed separately. Contenders run interleaved in
one process, A B A B ...: before each block a pause and one untimed call (BLAS
thread pools spin after a call and slow the next library down), then ``n``
timed calls, the device synchronised before each clock read. Reported: the
median of the blocks' ms per call, the spread (interquartile range over the
median), the ratio to PyTorch, characters (T*B tokens) per second, the fraction
of the FLOP floor -- 6 T B D (D + C) GEMM FLOPs over the rate of a large square
matmul measured in the same run: the best of 7 at the start ("floor"), and the
median of that matmul timed as one more contender among the blocks ("floor@t",
the same minutes as the steps, so that a slow phase of a shared machine lowers
both) -- and the peak memory a step allocates.
torch, jax and cupy are imported only when a contender needs them.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import _parallel, backends, optim
from .api import loss_and_grad
from .params import init_params

__all__ = ["SIZES", "Case", "Size", "gemm_rate", "parse_size", "run_benchmark", "time_blocks"]


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
        return text, Size(*(int(v) for v in text.split("x")))
    except (TypeError, ValueError):
        raise ValueError(
            f"size: expected one of {list(SIZES)} or BxTxDxMxC; got {text!r}"
        ) from None


@dataclass
class Case:
    """One contender at one size: ``step()`` runs once; ``sync()`` waits for the device."""

    name: str
    step: Callable[[], Any]
    sync: Callable[[], None] = lambda: None
    peak_bytes: Callable[[], int | None] = lambda: None
    update: Callable[[], Any] | None = None
    samples: list[float] = field(default_factory=list)  # ms per call, one per block
    update_samples: list[float] = field(default_factory=list)
    retries: int = 0  # blocks timed again because another process was busy
    contended: int = 0  # blocks kept although never quiet


def _traced_peak(fn: Callable[[], Any], before: Callable[[], None] = lambda: None) -> int:
    """Peak bytes allocated during one call (NumPy reports its buffers to tracemalloc)."""
    before()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _data(size: Size, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, size.M, (size.T, size.B)), rng.integers(0, size.C, (size.T, size.B))


def bptt_case(size: Size, dtype: str, backend: str, device: Any, seed: int = 0) -> Case:
    """``loss_and_grad`` through the array-API code on ``backend``."""
    be = backends.get_backend(backend, device)
    params = init_params(
        size.M, size.D, size.C, dtype=dtype, seed=seed, backend=be.name, device=be.device
    )
    x, y = (be.asarray(a) for a in _data(size, seed))
    step = lambda: loss_and_grad(params, x, y, check_values=False)  # noqa: E731
    grads = step()[1]
    opt = optim.adam(1e-3)
    with be.activate():  # CuPy: the optimizer's work runs on this GPU, not the current one
        state = opt.init(params)

    def update() -> Any:
        with be.activate():
            return opt.update(params, optim.clip_by_global_norm(grads, 5.0)[0], state)

    peak = _cupy_peak(step) if be.name == "cupy" else lambda: None
    if be.name in ("numpy", "array_api_strict"):
        peak = lambda: _traced_peak(step)  # noqa: E731
    elif be.name == "torch" and be.device.type == "cuda":
        peak = _torch_cuda_peak(step, be.device)
    where = be.name if device is None else f"{be.name}:{device}"
    label = "bptt" if be.name == "numpy" else f"bptt[{where}]"
    return Case(label, step, be.synchronize, peak, update)


def numpy_variant_case(size: Size, dtype: str, seed: int = 0) -> Case:
    """The NumPy-only yardstick (:mod:`bptt._numpy_variant`)."""
    from . import _numpy_variant as nv

    params = init_params(size.M, size.D, size.C, dtype=dtype, seed=seed, backend="numpy")
    x, y = _data(size, seed)
    step = lambda: nv.loss_and_grad(params, x, y)  # noqa: E731
    return Case("numpy-only", step, peak_bytes=lambda: _traced_peak(step, nv._buffers.clear))


def torch_case(size: Size, dtype: str, device: str, seed: int = 0) -> Case:
    """torch.nn.RNN(tanh) + Linear + CrossEntropyLoss + backward, one-hot inputs made once."""
    import torch

    torch.manual_seed(seed)
    dev, tdt = torch.device(device), getattr(torch, dtype)
    rnn = torch.nn.RNN(size.M, size.D, nonlinearity="tanh").to(dev, tdt)
    lin = torch.nn.Linear(size.D, size.C).to(dev, tdt)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = (torch.as_tensor(a, device=dev) for a in _data(size, seed))
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

    step()
    opt = torch.optim.Adam(params, lr=1e-3)

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    peak = _torch_cuda_peak(step, dev) if dev.type == "cuda" else (lambda: None)
    return Case("torch", step, sync, peak, update)


def jax_case(size: Size, dtype: str, seed: int = 0) -> Case:
    """lax.scan + value_and_grad under jit, compile excluded (raises ImportError without jax)."""
    import jax
    import jax.numpy as jnp

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    params = init_params(size.M, size.D, size.C, dtype=dtype, seed=seed, backend="numpy")
    p = {k: jnp.asarray(v) for k, v in params.items()}
    x, y = (jnp.asarray(a) for a in _data(size, seed))

    def loss(p: dict[str, Any]) -> Any:
        def cell(s: Any, ids: Any) -> tuple[Any, Any]:
            s = jnp.tanh(p["U"].T[ids] + s @ p["W"].T + p["b"])
            return s, s

        _, S = jax.lax.scan(cell, jnp.zeros((size.B, size.D), p["W"].dtype), x)
        logits = S @ p["V"].T + p["c"]  # (T, B, C)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))

    grad = jax.jit(jax.value_and_grad(loss))
    jax.block_until_ready(grad(p))  # compile
    # JAX dispatches asynchronously: each timed call waits for its own result
    return Case("jax", lambda: jax.block_until_ready(grad(p)), lambda: None, lambda: None)


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


def _square(backend: str, device: Any, dtype: str, n: int) -> tuple[backends.Backend, Any, Any]:
    be = backends.get_backend(backend, device)
    rng = np.random.default_rng(0)
    a, b = (be.asarray(rng.standard_normal((n, n)), dtype=dtype) for _ in range(2))
    return be, a, b


def gemm_case(backend: str, device: Any, dtype: str, n: int) -> Case:
    """The large square matmul as one more contender: timed in the same blocks."""
    be, a, b = _square(backend, device, dtype, n)
    return Case("gemm", lambda: a @ b, be.synchronize)


def gemm_rate(backend: str, device: Any, dtype: str, n: int = 2048, reps: int = 7) -> float:
    """FLOP/s of an (n, n) @ (n, n) product on ``backend``: the best of ``reps``.

    The best, not the median: it estimates what the machine can do, so that a busy
    moment lowers no floor (the fraction of the floor reached stays conservative).
    """
    be, a, b = _square(backend, device, dtype, n)
    times = []
    with be.activate():
        for _ in range(reps + 1):
            be.synchronize()
            t0 = time.perf_counter()
            a @ b
            be.synchronize()
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times[1:])


def _others_cpu() -> float | None:
    """CPU seconds used so far by everything but this process (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # less idle, iowait
    mine = os.times()
    return busy / os.sysconf("SC_CLK_TCK") - mine.user - mine.system


def _block(fn: Callable[[], Any], sync: Callable[[], None], n: int, pause: float) -> float:
    """ms per call of ``n`` calls, after a pause and one untimed call."""
    sync()
    time.sleep(pause)
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1e3 / n


def _quiet_block(case: Case, fn: Callable[[], Any], n: int, pause: float, guard: float) -> float:
    """A block during which other processes used under ``guard`` of a core, if one comes.

    On a shared machine a block that overlaps someone else's work is retried (up
    to 5 times, resting between tries); ``case.retries`` counts the retries and
    ``case.contended`` the blocks kept although never quiet (flagged in the table).
    """
    for _ in range(6):
        before, t0 = _others_cpu(), time.perf_counter()
        ms = _block(fn, case.sync, n, pause)
        after, wall = _others_cpu(), time.perf_counter() - t0
        if guard <= 0 or before is None or after is None or (after - before) < guard * wall:
            return ms
        case.retries += 1
        time.sleep(0.5)
    case.contended += 1
    return ms


def time_blocks(
    cases: list[Case], *, reps: int, pause: float, min_block: float, guard: float = 0.0
) -> None:
    """Fill ``case.samples`` (and ``update_samples``) with ``reps`` interleaved blocks each.

    ``guard`` > 0 retries blocks during which other processes used more than that
    fraction of a core (see :func:`_quiet_block`).
    """
    counts = {}
    for case in cases:  # warm up and choose calls per block from one call's time
        for fn in (case.step, case.update):
            if fn is not None:
                one = _block(fn, case.sync, 1, 0.0)
                counts[id(fn)] = max(1, round(min_block * 1e3 / max(one, 1e-3)))
    for _ in range(reps):
        for case in cases:
            n = counts[id(case.step)]
            case.samples.append(_quiet_block(case, case.step, n, pause, guard))
    for _ in range(reps):
        for case in cases:
            if case.update is not None:
                n = counts[id(case.update)]
                case.update_samples.append(_quiet_block(case, case.update, n, pause, guard))


def _stats(samples: list[float]) -> dict[str, float] | None:
    if not samples:
        return None
    q = np.percentile(samples, [25, 50, 75])
    return {"median": float(q[1]), "iqr_pct": float(100 * (q[2] - q[0]) / q[1])}


def run_benchmark(
    sizes: list[str],
    dtypes: list[str],
    backends_: list[tuple[str, Any]],
    *,
    torch_device: str | None = "cpu",
    with_jax: bool = True,
    reps: int = 7,
    pause: float = 0.1,
    min_block: float = 0.2,
    gemm_n: int = 2048,
    guard: float = 0.0,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict[str, Any]]:
    """One row per (size, dtype, contender); see the module docstring for the columns."""
    rows: list[dict[str, Any]] = []
    for dtype in dtypes:
        rate = gemm_rate(*backends_[0], dtype, n=gemm_n)
        log(f"{dtype}: large square GEMM {rate / 1e9:.1f} GFLOP/s")
        for label in sizes:
            name, size = parse_size(label)
            cases = [bptt_case(size, dtype, b, d) for b, d in backends_]
            if any(b == "numpy" for b, _ in backends_):
                cases.append(numpy_variant_case(size, dtype))
            missing = {}
            if torch_device:
                try:
                    cases.append(torch_case(size, dtype, torch_device))
                except ImportError:
                    missing["torch"] = "not installed"
            if with_jax:
                try:
                    cases.append(jax_case(size, dtype))
                except ImportError:
                    missing["jax"] = "not installed"
            gemm = gemm_case(*backends_[0], dtype, gemm_n)
            time_blocks([*cases, gemm], reps=reps, pause=pause, min_block=min_block, guard=guard)
            step = {c.name: _stats(c.samples) for c in cases}
            ref = step.get("torch")
            rate_now = 2 * gemm_n**3 / (_stats(gemm.samples)["median"] / 1e3)  # type: ignore[index]
            for case in cases:
                s = step[case.name]
                assert s is not None
                ms = s["median"]
                rows.append(
                    {
                        "size": name,
                        **size._asdict(),
                        "dtype": dtype,
                        "impl": case.name,
                        "ms_per_step": ms,
                        "iqr_pct": s["iqr_pct"],
                        "samples_ms": case.samples,
                        "vs_torch": ms / ref["median"] if ref else None,
                        "chars_per_s": size.T * size.B / (ms / 1e3),
                        "floor_fraction": size.flops / (ms / 1e3) / rate,
                        "gemm_gflops": rate / 1e9,
                        "floor_fraction_same_time": size.flops / (ms / 1e3) / rate_now,
                        "gemm_gflops_same_time": rate_now / 1e9,
                        "peak_mib": _mib(case.peak_bytes()),
                        "update_ms": (_stats(case.update_samples) or {}).get("median"),
                        "retried_blocks": case.retries,
                        "contended_blocks": case.contended,
                    }
                )
                log(_format_row(rows[-1]))
            for key, why in missing.items():
                rows.append({"size": name, "dtype": dtype, "impl": key, "status": why})
                log(f"{name:4} {dtype:8} {key:12} {why}")
    return rows


def _mib(n: int | None) -> float | None:
    return None if n is None else n / 2**20


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


HEADER = (
    "size dtype    impl          ms/step  spread  vs torch    chars/s  floor floor@t  peak MiB"
    "  update ms"
)


def _format_row(r: dict[str, Any]) -> str:
    if "status" in r:
        return f"{r['size']:4} {r['dtype']:8} {r['impl']:12} {r['status']}"
    flag = " (contended)" if r.get("contended_blocks") else ""
    return (
        f"{r['size']:4} {r['dtype']:8} {r['impl']:12} {r['ms_per_step']:9.2f} "
        f"{r['iqr_pct']:6.1f}% {_f(r['vs_torch'], '8.2f'):>9} {r['chars_per_s']:10.0f} "
        f"{r['floor_fraction']:6.2f} {r['floor_fraction_same_time']:7.2f} "
        f"{_f(r['peak_mib'], '9.1f'):>9} "
        f"{_f(r['update_ms'], '10.3f'):>10}{flag}"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    """The stdout table."""
    return "\n".join([HEADER, *(_format_row(r) for r in rows)])


def _malloc(meta: dict[str, Any]) -> str:
    return "thresholds raised (bptt.malloc)" if meta.get("malloc_tuned") else "defaults"


def format_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """A Markdown table with the date, the machine and the command, for the README."""
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; BLAS: {meta['blas']}; "
        f"threads: {meta['threads']}; malloc: {_malloc(meta)}.",
        f"Command: `{meta['command']}`. Medians of {meta['reps']} interleaved blocks.",
        "",
        "| size | dtype | implementation | ms/step | spread | vs torch | chars/s "
        "| FLOP floor | floor@t | peak MiB | update ms |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        if "status" in r:
            lines.append(f"| {r['size']} | {r['dtype']} | {r['impl']} | {r['status']} ||||||||")
            continue
        lines.append(
            f"| {r['size']} | {r['dtype']} | {r['impl']} | {r['ms_per_step']:.2f} "
            f"| {r['iqr_pct']:.1f}% | {_f(r['vs_torch'], '.2f')} | {r['chars_per_s']:,.0f} "
            f"| {r['floor_fraction']:.2f} | {r['floor_fraction_same_time']:.2f} "
            f"| {_f(r['peak_mib'], '.1f')} "
            f"| {_f(r['update_ms'], '.3f')} |"
        )
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, BLAS library and thread counts, for the record."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    blas_threads = os.cpu_count() or 1
    try:
        from threadpoolctl import threadpool_info

        libs = [i for i in threadpool_info() if i["user_api"] == "blas"]
        blas = ", ".join(f"{i['internal_api']} {i.get('version')}" for i in libs)
        blas_threads = max((i["num_threads"] for i in libs), default=blas_threads)
    except ImportError:
        blas = "unknown (threadpoolctl not installed)"
    return {
        "machine": f"{model}, {os.cpu_count()} cores",
        "blas": blas,
        "blas_threads": blas_threads,
        "numpy": np.__version__,
        "bptt_threads": _parallel.max_threads(),
        "bptt_overlap": _parallel.overlap_mode(),
        "bptt_split": _parallel.split_mode(),
    }
