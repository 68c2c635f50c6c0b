"""Compile time of bptt's jitted training step on JAX over T: the scan against the unrolled loop.

    python benchmarks/jax_compile.py --size S2 --T 100,200,1000,10000 --reps 3
    python benchmarks/jax_compile.py --T 200 --cells tanh,relu,gru,lstm --unrolled-max 0

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
bodies included), the size XLA is handed; ``cpu s``: the process's CPU seconds over
trace, lower and compile (steadier than the wall clock on a shared machine).

Besides the training step (``train``: gradients, flatten, clip, Adam, the carry), each
round compiles, at the same sizes: ``grads``, bptt's ``loss_and_grad`` alone (the
training step less the optimizer); and ``hand-written``, the baseline of
``bench_step.py`` (``benchmarks/bench_cases.jax_case``: a ``lax.scan`` tanh cell and
``jax.value_and_grad``), so compile times read as ratios to it on any machine.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
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


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _abstract_args(size: Any, T: int, dtype: str, model: Any) -> tuple[Any, Any, Any, Any]:
    """(layout, carry as ShapeDtypeStructs, inputs, targets) of a step at T."""
    import jax
    import jax.numpy as jnp

    params = model.init(dtype=dtype, backend="numpy")
    layout = Layout.of(params)
    N = sum(int(v.size) for v in params.values())
    flat = jax.ShapeDtypeStruct((N,), jnp.dtype(dtype))
    optimizer = optim.chain(optim.clip_by_global_norm(5.0), optim.adam(1e-3))
    opt_state = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
        optimizer.init(jnp.zeros((N,), jnp.dtype(dtype))),
    )  # the state's shapes: (N,) moments and 0-d counts
    hidden = jax.ShapeDtypeStruct(model.carry_shape(size.B), jnp.dtype(dtype))
    carry = TrainCarry(flat, opt_state, hidden, jax.ShapeDtypeStruct((), jnp.int32))
    ids = jax.ShapeDtypeStruct((T, size.B), jnp.int32)
    return (layout, optimizer), carry, ids, ids


def _program(size: Any, T: int, what: str, dtype: str, model: Any,
             dropout: float) -> tuple[Any, tuple[Any, ...]]:  # fmt: skip
    """(function, abstract arguments) of one contender: ``what`` is "train scan",
    "train unrolled", "grads scan" or "hand-written"."""
    import jax
    import jax.numpy as jnp

    (layout, optimizer), carry, x, y = _abstract_args(size, T, dtype, model)
    kind, _, schedule = what.partition(" ")
    if kind == "train":
        step = make_train_step(optimizer, layout, schedule=schedule, dropout=dropout,
                               model=model)  # fmt: skip
        return step, (carry, x, y)
    shapes = model.param_shapes()
    params = {k: jax.ShapeDtypeStruct(v, jnp.dtype(dtype)) for k, v in shapes.items()}
    h0 = jax.ShapeDtypeStruct(model.carry_shape(size.B), jnp.dtype(dtype))
    if kind == "grads":

        def grads(params: Any, x: Any, y: Any, h0: Any) -> Any:
            return model.loss_and_grad(params, x, y, h0=model.unpack_state(h0),
                                       check_values=False, schedule=schedule)  # fmt: skip

        return grads, (params, x, y, h0)

    def loss(p: dict[str, Any], x: Any, y: Any) -> Any:  # bench_cases.jax_case's model
        def cell(s: Any, ids: Any) -> tuple[Any, Any]:
            s = jnp.tanh(p["U"].T[ids] + s @ p["W"].T + p["b"])
            return s, s

        _, S = jax.lax.scan(cell, jnp.zeros((size.B, size.D), p["W"].dtype), x)
        logp = jax.nn.log_softmax(S @ p["V"].T + p["c"], axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))

    vanilla = {k: params[k] for k in ("U", "W", "b", "V", "c")}
    return jax.value_and_grad(loss), (vanilla, x, y)


def compile_seconds(size: Any, T: int, what: str, dtype: str = "float32", cell: str = "tanh",
                    layers: int = 1, dropout: float = 0.0) -> dict[str, float]:  # fmt: skip
    """One fresh trace + lower and compile of a contender: seconds and program size."""
    import jax

    model = bptt.RNN(size.M, size.D, size.C, cell=cell, layers=layers)
    fn, args = _program(size, T, what, dtype, model, dropout)
    c0, t0 = _cpu(), time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    t1 = time.perf_counter()
    lowered.compile()
    t2, c2 = time.perf_counter(), _cpu()
    eqns = _program_size(jax.make_jaxpr(fn)(*args).jaxpr)
    return {"trace": t1 - t0, "compile": t2 - t1, "total": t2 - t0, "cpu": c2 - c0,
            "eqns": eqns}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jax_compile.py", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--size", default="S2", help=f"B, D, M, C of {','.join(SIZES)} or BxTxDxMxC")
    add("--T", default="100,200,1000,10000", help="sequence lengths, comma-separated")
    add("--cells", default="tanh", help="cells, comma-separated: tanh,relu,gru,lstm")
    add(
        "--no-baselines",
        action="store_true",
        help="only the training step (no grads-only or hand-written rows)",
    )
    add("--reps", type=int, default=3, help="interleaved rounds (medians over them)")
    add("--unrolled-max", type=int, default=200, help="largest T the unrolled loop compiles at")
    add("--dtype", default="float32")
    add("--layers", type=int, default=1)
    add("--dropout", type=float, default=0.0)
    return parser


def _cells(args: argparse.Namespace, Ts: list[int]) -> list[tuple[int, str, str]]:
    cells = []
    for T in Ts:
        for cell in args.cells.split(","):
            whats = ["train scan"] + (["train unrolled"] if T <= args.unrolled_max else [])
            if not args.no_baselines:
                whats += ["grads scan"] + (["hand-written"] if cell == "tanh" else [])
            cells += [(T, cell, w) for w in whats]
    return cells


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import jax

    name, size = parse_size(args.size)
    Ts = [int(t) for t in args.T.split(",")]
    cells = _cells(args, Ts)
    compile_seconds(size, Ts[0], "train scan", args.dtype)  # warm JAX's own start-up
    runs: dict[tuple[int, str, str], list[dict[str, float]]] = {c: [] for c in cells}
    for r in range(args.reps):
        order = cells[r % len(cells) :] + cells[: r % len(cells)]
        for T, cell, what in order:
            got = compile_seconds(size, T, what, args.dtype, cell, args.layers, args.dropout)
            runs[(T, cell, what)].append(got)
            print(f"# round {r}: T={T} {cell} {what}: {got['total']:.2f} s", file=sys.stderr,
                  flush=True)  # fmt: skip
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())  # fmt: skip
    load = open("/proc/loadavg").read().split()[:3]
    print(
        f"# {datetime.datetime.now().isoformat(timespec='minutes')}, {cpu}, JAX "
        f"{jax.__version__} on {jax.devices()[0]}, {args.dtype}, size {name} (B={size.B}, "
        f"D={size.D}, M={size.M}, C={size.C}), layers={args.layers}, dropout={args.dropout}, "
        f"medians of {args.reps} interleaved rounds, load average {' '.join(load)} at the end"
    )
    print("# python benchmarks/jax_compile.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print("| T | cell | program | trace+lower s | compile s | first-call compile s | cpu s "
          "| eqns |")  # fmt: skip
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for T, cell, what in cells:
        rows = runs[(T, cell, what)]
        med = {k: statistics.median(r[k] for r in rows)
               for k in ("trace", "compile", "total", "cpu")}  # fmt: skip
        print(f"| {T} | {cell} | {what} | {med['trace']:.2f} | {med['compile']:.2f} | "
              f"{med['total']:.2f} | {med['cpu']:.2f} | {rows[0]['eqns']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
