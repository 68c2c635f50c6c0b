"""How the training step is executed: eagerly, under ``jax.jit``, or as a CUDA graph.

The step (:func:`bptt.train.step.make_train_step`) is one pure function with no
value-dependent control flow and no host sync, so it can be compiled as a whole:

- ``"jit"``: ``jax.jit`` on the JAX backend, compiled ahead of time on the first
  call's shapes (one compiled step serves the whole run: the optimizer's count and
  the dropout counter are traced values);
- ``"cuda-graph"``: captured once as a CUDA graph on CuPy or torch CUDA and replayed
  every step: one launch instead of ~6 T + 62 kernels. The step then reads its
  inputs from, and writes the new carry into, static device buffers (a replay reads
  the addresses the capture saw); the carry it returns *is* those buffers.
- ``"none"``: call the step as it is (NumPy, array_api_strict, torch CPU).

``"auto"`` is ``"jit"`` on JAX and ``"none"`` elsewhere: a CUDA graph is opt-in
(``bptt train --cuda-graph``). Asking for a mode the backend cannot run raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import backends

__all__ = ["MODES", "CompiledStep", "compile_step"]

MODES = ("auto", "none", "jit", "cuda-graph")

Step = Callable[[Any, Any, Any], tuple[Any, Any, Any]]


@dataclass
class CompiledStep:
    """A training step and how it runs. ``compile_seconds`` is set by the first call
    (tracing and compiling, or warm-up and capture); None for ``"none"``."""

    step: Step
    mode: str  # "none", "jit" or "cuda-graph"
    description: str
    compile_seconds: float | None = None

    def __call__(self, carry: Any, inputs: Any, targets: Any) -> tuple[Any, Any, Any]:
        return self.step(carry, inputs, targets)


def compile_step(step: Step, backend: backends.Backend, mode: str = "auto") -> CompiledStep:
    """``step`` prepared to run on ``backend`` in ``mode`` (one of :data:`MODES`)."""
    if mode not in MODES:
        raise ValueError(f"compile: {mode!r} is not one of {list(MODES)}")
    if mode == "auto":
        mode = "jit" if backend.name == "jax" else "none"
    if mode == "none":
        return CompiledStep(step, "none", "eager (one call per array operation)")
    if mode == "jit":
        if backend.name != "jax":
            raise ValueError(f"compile: 'jit' needs the jax backend; this run is on {backend.name}")
        compiled = CompiledStep(step, "jit", "jax.jit (compiled on the first step)")
        compiled.step = _AheadOfTime(step, compiled)
        return compiled
    graph = _graph_library(backend)
    compiled = CompiledStep(step, "cuda-graph", f"CUDA graph ({graph.name}), replayed each step")
    compiled.step = _GraphStep(step, graph, compiled)
    return compiled


class _AheadOfTime:
    """``jax.jit(step)``, lowered and compiled on the first call and timed."""

    def __init__(self, step: Step, record: CompiledStep) -> None:
        import jax

        self.jitted, self.record, self.compiled = jax.jit(step), record, None

    def __call__(self, *args: Any) -> tuple[Any, Any, Any]:
        if self.compiled is None:
            t0 = time.perf_counter()
            self.compiled = self.jitted.lower(*args).compile()
            self.record.compile_seconds = time.perf_counter() - t0
        return self.compiled(*args)


# ---- CUDA graphs --------------------------------------------------------------------------


def _graph_library(backend: backends.Backend) -> Any:
    """The capture primitives for ``backend``, or a ValueError saying why there are none."""
    where = f"{backend.name} device {backend.device!r}"
    if backend.name == "cupy":
        return _CupyGraphs(backend)
    if backend.name == "torch" and getattr(backend.device, "type", None) == "cuda":
        return _TorchGraphs(backend)
    raise ValueError(
        f"compile: 'cuda-graph' needs CuPy or torch on a CUDA device; {where} is neither"
    )


def _leaves(tree: Any) -> list[Any]:
    """The arrays of a carry (nested tuples and NamedTuples), in a fixed order."""
    if isinstance(tree, tuple):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [] if tree is None else [tree]


def _map_leaves(fn: Callable[[Any], Any], tree: Any) -> Any:
    """``tree`` (nested tuples and NamedTuples of arrays, or None) with ``fn`` applied
    to each array."""
    if isinstance(tree, tuple):
        items = [_map_leaves(fn, t) for t in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
    return None if tree is None else fn(tree)


class _GraphStep:
    """Capture ``step`` once on static buffers; every later call copies the inputs in
    (device to device, skipped when the caller passes the buffers back) and replays.

    Warm-up runs the step twice on copies of the carry (so nothing advances) to load
    kernels and fill the graph's private memory pool; the capture records without
    executing, so the first replay is the first real step.
    """

    def __init__(self, step: Step, graphs: Any, record: CompiledStep) -> None:
        self.step, self.graphs, self.record = step, graphs, record
        self.graph = None

    def _capture(self, carry: Any, inputs: Any, targets: Any) -> None:
        g, t0 = self.graphs, time.perf_counter()
        self.static = g.clone((carry, inputs, targets))  # the addresses the graph reads
        with g.side_stream():
            for _ in range(2):
                g.clone(self.step(*g.clone(self.static)))
            self.graph = g.capture(self._body)
        g.synchronize()  # once, at capture time
        self.record.compile_seconds = time.perf_counter() - t0

    def _body(self) -> None:
        new, loss, norm = self.step(*self.static)
        for dst, src in zip(_leaves(self.static[0]), _leaves(new), strict=True):
            self.graphs.copy(dst, src)  # the new carry lands in the static one
        self.outputs = (loss, norm)

    def __call__(self, carry: Any, inputs: Any, targets: Any) -> tuple[Any, Any, Any]:
        if self.graph is None:
            self._capture(carry, inputs, targets)
        else:
            for dst, src in zip(_leaves(self.static), _leaves((carry, inputs, targets)),
                                strict=True):  # fmt: skip
                if src is not dst:
                    self.graphs.copy(dst, src)
        self.graphs.replay(self.graph)
        return self.static[0], *self.outputs


class _CupyGraphs:
    """CuPy's stream capture, on a non-blocking stream with a memory pool of its own
    (so no allocation outside the graph reuses its intermediates' blocks)."""

    name = "CuPy"

    def __init__(self, backend: backends.Backend) -> None:
        import cupy

        self.cupy = cupy
        with backend.activate():
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.pool = cupy.cuda.MemoryPool()

    def side_stream(self) -> Any:
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(self.cupy.cuda.using_allocator(self.pool.malloc))
        stack.enter_context(self.stream)
        return stack

    def clone(self, tree: Any) -> Any:
        return _map_leaves(lambda a: a.copy(), tree)

    def copy(self, dst: Any, src: Any) -> None:
        self.cupy.copyto(dst, src)

    def capture(self, body: Callable[[], None]) -> Any:
        self.stream.begin_capture()
        try:
            body()
        finally:
            graph = self.stream.end_capture()
        return graph

    def replay(self, graph: Any) -> None:
        graph.launch(stream=self.cupy.cuda.get_current_stream())  # allocates nothing

    def synchronize(self) -> None:
        self.stream.synchronize()


class _TorchGraphs:
    """``torch.cuda.CUDAGraph``: torch warms up on a side stream and keeps the graph's
    memory in a private pool itself."""

    name = "torch"

    def __init__(self, backend: backends.Backend) -> None:
        import torch

        self.torch, self.device = torch, backend.device
        self.stream = torch.cuda.Stream(device=backend.device)

    def side_stream(self) -> Any:
        self.stream.wait_stream(self.torch.cuda.current_stream(self.device))
        return self.torch.cuda.stream(self.stream)

    def clone(self, tree: Any) -> Any:
        return _map_leaves(lambda a: a.clone(), tree)

    def copy(self, dst: Any, src: Any) -> None:
        dst.copy_(src)

    def capture(self, body: Callable[[], None]) -> Any:
        graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.graph(graph):
            body()
        return graph

    def replay(self, graph: Any) -> None:
        graph.replay()

    def synchronize(self) -> None:
        self.torch.cuda.synchronize(self.device)
