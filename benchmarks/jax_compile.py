"""Compile time of bptt's jitted training step on JAX over T: the scan against the unrolled loop.

    python benchmarks/jax_compile.py --size S2 --T 25,100,200,1000,10000 --reps 3

The step is the one ``bptt train`` runs (:func:`bptt.train.make_train_step`: loss and
gradients by BPTT, clip, Adam, the carried state), compiled as
:mod:`bptt.execution.compiled` compiles it: ``jax.jit(step).lower(...).compile()`` on the
first call's shapes (abstract arguments here: nothing is allocated, so T = 10,000
costs no memory). Each cell is a fresh trace and compile (a new step function, so no
cache is hit). Rounds are interleaved (every T and schedule once per round, the order
rotated) and the table shows medians over the rounds: trace + lower, XLA's compile,
and their sum (what ``bptt train`` reports as the step's compile time). The unrolled
loop (``schedule="unrolled"``, one copy of the step body per time step) is skipped
above ``--unrolled-max``. Columns ``eqns``: the equations of the step's program (loop
bodies included), the size XLA is handed.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from typing import Any

from bench_cases import SIZES, parse_size

import bptt
from bptt import optim
from bptt.math.flat import Layout
from bptt.train import TrainCarry, make_train_step

__all__ = ["compile_seconds", "main"]


def _program_size(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _program_size(inner)
    return total


def _abstract_args(size: Any, T: int, dtype: str, layers: int) -> tuple[Any, Any, Any, Any]:
    """(layout, carry as ShapeDtypeStructs, inputs, targets) of a step at T."""
    import jax
    import jax.numpy as jnp

    params = bptt.init_params(size.M, size.D, size.C, dtype=dtype, backend="numpy",
                              num_layers=layers)  # fmt: skip
    layout = Layout.of(params)
    N = sum(int(v.size) for v in params.values())
    flat = jax.ShapeDtypeStruct((N,), jnp.dtype(dtype))
    optimizer = optim.chain(optim.clip_by_global_norm(5.0), optim.adam(1e-3))
    opt_state = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
        optimizer.init(jnp.zeros((N,), jnp.dtype(dtype))),
    )  # the state's shapes: (N,) moments and 0-d counts
    hidden = (size.B, size.D) if layers == 1 else (layers, size.B, size.D)
    carry = TrainCarry(flat, opt_state, jax.ShapeDtypeStruct(hidden, jnp.dtype(dtype)),
                       jax.ShapeDtypeStruct((), jnp.int32))  # fmt: skip
    ids = jax.ShapeDtypeStruct((T, size.B), jnp.int32)
    return (layout, optimizer), carry, ids, ids


def compile_seconds(size: Any, T: int, schedule: str, dtype: str = "float32",
                    layers: int = 1, dropout: float = 0.0) -> dict[str, float]:  # fmt: skip
    """One fresh trace + lower and compile of the training step: seconds and program size."""
    import jax

    (layout, optimizer), carry, x, y = _abstract_args(size, T, dtype, layers)
    step = make_train_step(optimizer, layout, schedule=schedule, dropout=dropout)
    t0 = time.perf_counter()
    lowered = jax.jit(step).lower(carry, x, y)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    eqns = _program_size(jax.make_jaxpr(step)(carry, x, y).jaxpr)
    return {"trace": t1 - t0, "compile": t2 - t1, "total": t2 - t0, "eqns": eqns}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jax_compile.py", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--size", default="S2", help=f"B, D, M, C of {','.join(SIZES)} or BxTxDxMxC")
    add("--T", default="25,100,200,1000,10000", help="sequence lengths, comma-separated")
    add("--reps", type=int, default=3, help="interleaved rounds (medians over them)")
    add("--unrolled-max", type=int, default=200, help="largest T the unrolled loop compiles at")
    add("--dtype", default="float32")
    add("--layers", type=int, default=1)
    add("--dropout", type=float, default=0.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import jax

    name, size = parse_size(args.size)
    Ts = [int(t) for t in args.T.split(",")]
    cells = [(T, s) for T in Ts for s in ("scan", "unrolled") if s == "scan" or
             T <= args.unrolled_max]  # fmt: skip
    compile_seconds(size, Ts[0], "scan", args.dtype, args.layers)  # warm JAX's own start-up
    runs: dict[tuple[int, str], list[dict[str, float]]] = {c: [] for c in cells}
    for r in range(args.reps):
        order = cells[r % len(cells) :] + cells[: r % len(cells)]
        for T, schedule in order:
            got = compile_seconds(size, T, schedule, args.dtype, args.layers, args.dropout)
            runs[(T, schedule)].append(got)
            print(f"# round {r}: T={T} {schedule}: {got['total']:.2f} s", file=sys.stderr,
                  flush=True)  # fmt: skip
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())  # fmt: skip
    print(f"# {datetime.datetime.now().isoformat(timespec='minutes')}, {cpu}, JAX "
          f"{jax.__version__} on {jax.devices()[0]}, {args.dtype}, size {name} (B={size.B}, "
          f"D={size.D}, M={size.M}, C={size.C}), layers={args.layers}, dropout={args.dropout}, "
          f"medians of {args.reps} interleaved rounds")  # fmt: skip
    print("# python benchmarks/jax_compile.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print("| T | schedule | trace+lower s | compile s | first-call compile s | eqns |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for T, schedule in cells:
        rows = runs[(T, schedule)]
        med = {k: statistics.median(r[k] for r in rows) for k in ("trace", "compile", "total")}
        print(f"| {T} | {schedule} | {med['trace']:.2f} | {med['compile']:.2f} | "
              f"{med['total']:.2f} | {rows[0]['eqns']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
