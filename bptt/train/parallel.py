"""The data-parallel training step: (gradients) -> one all-reduce -> (update).

Each rank runs :func:`make_gradient_part` on its B/N streams, the ranks sum one flat
buffer (the gradient and the loss, N + 1 numbers: one all-reduce per step, never one
per parameter; :func:`bptt.train.allreduce.gradient_allreduce`), and every rank runs
:func:`make_update_part` on the sum. So an N-rank run is the single-process run of
:func:`bptt.train.step.make_train_step` with its sums done in another order:

- each rank's loss is the mean over its T B/N characters; the sum over ranks times
  1/N is the whole batch's mean (for N a power of two the scalings are exact, and only
  the order of the sums differs);
- the global-norm clip and the optimizer see the whole batch's gradient;
- the dropout mask is the one a single process draws for the whole batch (the
  counter-based generator, keyed on the step), cut to this rank's streams.

Both parts are pure (no host read, no value-dependent control flow); on JAX each is
compiled by ``jax.jit`` on its own (:mod:`bptt.execution.compiled`), the all-reduce runs
between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import optim
from ..backends import namespace_of
from ..execution.compiled import compile_step
from ..math.flat import Layout
from .allreduce import gradient_allreduce
from .distributed import Shard
from .step import TrainCarry, make_gradients

__all__ = ["ParallelStep", "make_gradient_part", "make_parallel_step", "make_update_part"]


def make_gradient_part(
    layout: Layout, shard: Shard, *, dropout: float = 0.0, seed: int = 0,
    schedule: str | None = None, model: Any, remat: Any = None,
) -> Callable[[TrainCarry, Any, Any], tuple[Any, Any]]:  # fmt: skip
    """``gradients(carry, inputs, targets) -> (buffer, h_last)`` for this rank's streams:
    ``inputs``/``targets`` (T, B/N), ``carry.hidden`` (..., B/N, D); ``buffer`` (N + 1,)
    is the flat gradient of this rank's mean loss, then that loss. Dropout masks are
    this rank's rows of the whole batch's (:func:`bptt.train.step.make_gradients`)."""
    columns = (shard.start, shard.stop, shard.batch)
    local = make_gradients(layout, dropout=dropout, seed=seed, schedule=schedule,
                           model=model, columns=columns, remat=remat)  # fmt: skip

    def gradients(carry: TrainCarry, inputs: Any, targets: Any) -> tuple[Any, Any]:
        xp, _ = namespace_of({"carry.params": carry.params})
        loss, grads, h_last = local(carry, inputs, targets)
        pieces = [xp.reshape(grads[k], (-1,)) for k in layout.keys]
        return xp.concat([*pieces, xp.reshape(loss, (1,))]), h_last  # (N + 1,): one concat

    return gradients


def make_update_part(
    optimizer: optim.GradientTransformation, layout: Layout, shard: Shard
) -> Callable[[TrainCarry, Any, Any], tuple[TrainCarry, Any, Any]]:
    """``update(carry, summed, h_last) -> (carry, loss, norm)``: ``summed`` (N + 1,) is
    the buffer summed over the ranks; the whole batch's mean gradient and loss are it
    times 1/N. ``norm`` is the gradient's global norm before clipping."""
    n, scale = layout.size, 1.0 / shard.size

    def update(carry: TrainCarry, summed: Any, h_last: Any) -> tuple[TrainCarry, Any, Any]:
        mean = summed * scale if shard.size > 1 else summed  # (N + 1,)
        g, loss = mean[:n], mean[n]  # (N,) gradient and 0-d loss: views
        updates, opt_state = optimizer.update(g, carry.opt_state, carry.params)
        norm = optim.last_norm(opt_state)
        if norm is None:
            norm = optim.global_norm(g)
        return TrainCarry(carry.params + updates, opt_state, h_last, carry.step + 1), loss, norm

    return update


class ParallelStep:
    """``step(carry, inputs, targets) -> (carry, loss, norm)`` over the ranks: the
    gradient part, the all-reduce, the update part. ``mode``, ``description`` and
    ``compile_seconds`` as :class:`bptt.execution.compiled.CompiledStep`'s; ``reduce_seconds``
    adds up the host time spent in the all-reduce (on NumPy, the time it took)."""

    def __init__(self, gradients: Any, allreduce: Any, update: Any, size: int) -> None:
        self.gradients, self.allreduce, self.update = gradients, allreduce, update
        self.mode = gradients.mode
        self.description = (
            f"data-parallel on {size} ranks: {gradients.description} for the gradients, "
            f"{allreduce.description}, then the update"
        )
        self.reduce_seconds = 0.0

    @property
    def compile_seconds(self) -> float | None:
        parts = (self.gradients.compile_seconds, self.update.compile_seconds)
        return None if None in parts else sum(parts)

    def __call__(self, carry: TrainCarry, inputs: Any, targets: Any) -> tuple[Any, Any, Any]:
        buf, h_last = self.gradients(carry, inputs, targets)
        t0 = time.perf_counter()
        buf = self.allreduce(buf)
        self.reduce_seconds += time.perf_counter() - t0
        return self.update(carry, buf, h_last)


def make_parallel_step(
    optimizer: optim.GradientTransformation, layout: Layout, comm: Any, backend: Any,
    shard: Shard, *, dropout: float = 0.0, seed: int = 0, compile: str = "auto",
    allreduce: str = "auto", schedule: str | None = None, model: Any, remat: Any = None,
) -> ParallelStep:  # fmt: skip
    """The data-parallel step on ``backend`` for ``comm``'s ranks. ``compile``: ``"auto"``
    or ``"jit"`` (JAX: each part under ``jax.jit``), ``"none"``; a CUDA graph cannot hold
    the all-reduce and is refused. ``allreduce``: see
    :func:`bptt.train.allreduce.gradient_allreduce`."""
    if compile == "cuda-graph":
        raise ValueError(
            "--compile cuda-graph: not with data-parallel training (the all-reduce runs "
            "between the captured parts); leave it out on several ranks"
        )
    reduce = gradient_allreduce(comm, backend, allreduce)
    gradients = make_gradient_part(layout, shard, dropout=dropout, seed=seed, schedule=schedule,
                                   model=model, remat=remat)  # fmt: skip
    update = make_update_part(optimizer, layout, shard)
    parts = [compile_step(part, backend, compile) for part in (gradients, update)]
    return ParallelStep(parts[0], reduce, parts[1], shard.size)
