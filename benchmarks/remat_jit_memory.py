"""Memory-bounded BPTT under ``jax.jit``: XLA's temporary bytes and compile time over T.

    python benchmarks/remat_jit_memory.py --T 100,1000,10000 --B 32 --D 256

One step is ``model.loss_and_grad`` (forward, softmax head, backward; token ids in,
a vocabulary of ``--vocab``, one tanh layer by default) on JAX, float32, jitted with
the parameters as its argument. ``temp MiB``: ``jax.jit(step).lower(params).compile()
.memory_analysis().temp_size_in_bytes``, the scratch XLA allocates for the program
beyond its arguments and outputs (the step's own peak, as XLA plans it, not RSS).
``compile s``: lower + compile, one run. ``s/step``: median of ``--reps`` calls of
the compiled step (0: not timed). Settings: None (full BPTT), k = 10, ``"sqrt"`` (both
two ``lax.scan`` loops over segments, :mod:`bptt.math.remat_scan`) and, at T <= ``--dp-max``,
``budget:m`` at sqrt's slots (under jit the uniform k that fits m, scanned too:
:func:`bptt.math.remat.uniform_k`). ``cost``: forward steps of the plan that runs.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from typing import Any

import numpy as np

import bptt
from bptt.math import remat
from bptt.math.remat import plan

__all__ = ["main", "measure"]


def measure(T: int, B: int, D: int, V: int, setting: Any, cell: str, reps: int) -> tuple:
    """(temp bytes, compile seconds, seconds per step) of the jitted step."""
    import jax
    import jax.numpy as jnp

    model = bptt.RNN(V, D, V, cell=cell)
    params = {k: jnp.asarray(v) for k, v in model.init(seed=0, dtype="float32").items()}
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.integers(0, V, (T, B))), jnp.asarray(rng.integers(0, V, (T, B)))

    def step(p: Any, xs: Any, ys: Any) -> Any:
        return model.loss_and_grad(p, xs, ys, check_values=False, remat=setting)

    start = time.perf_counter()
    compiled = jax.jit(step).lower(params, x, y).compile()
    seconds = time.perf_counter() - start
    temp = compiled.memory_analysis().temp_size_in_bytes
    per_step = float("nan")
    if reps:
        jax.block_until_ready(compiled(params, x, y))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, x, y))
            times.append(time.perf_counter() - t0)
        per_step = statistics.median(times)
    return temp, seconds, per_step


def _cost_under_jit(T: int, setting: Any) -> int:
    """Forward steps of the plan the jitted step runs (a budget: its uniform k, if any)."""
    budget = remat.parse(setting)
    k = remat.uniform_k(T, budget.states) if isinstance(budget, remat.Budget) else None
    return remat.uniform_cost(T, k)[0] if k else plan(T, setting).cost


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", default="100,1000,10000")
    parser.add_argument("--B", type=int, default=32)
    parser.add_argument("--D", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--cell", default="tanh")
    parser.add_argument("--reps", type=int, default=0)
    parser.add_argument("--dp-max", type=int, default=100, help="largest T for budget:m")
    parser.add_argument("--settings", default="None,10,sqrt")
    args = parser.parse_args(argv)
    import jax

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {cpu}, JAX "
          f"{jax.__version__} ({jax.default_backend()}), B={args.B} D={args.D} "
          f"vocab={args.vocab} {args.cell} float32")  # fmt: skip
    print("| T | remat | cost | temp MiB | % of full | compile s | s/step |")
    print("|---|---|---|---|---|---|---|")
    for T in (int(t) for t in args.T.split(",")):
        settings = [None if s == "None" else s for s in args.settings.split(",")]
        if T <= args.dp_max:
            settings.append(f"budget:{plan(T, 'sqrt').peak}")
        full = None
        for s in settings:
            temp, seconds, per_step = measure(T, args.B, args.D, args.vocab, s, args.cell,
                                              args.reps)  # fmt: skip
            full = temp if s is None else full
            cost = T if s is None else _cost_under_jit(T, s)
            share = f"{100 * temp / full:.1f}" if full else ""
            print(f"| {T} | {s} | {cost} | {temp / 2**20:.1f} | {share} | {seconds:.1f} | "
                  f"{per_step:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
