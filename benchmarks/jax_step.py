"""Run time of bptt's jitted step on JAX against the hand-written ``lax.scan``, interleaved.

    python benchmarks/jax_step.py --sizes S1,S2,S3 --reps 9 --unrolled S1,S2

The contenders of ``bench_step.py``'s JAX rows (``benchmarks/bench_cases.py``): ``jax``,
the hand-written ``lax.scan`` tanh cell with ``jax.value_and_grad``; ``bptt[jax.jit]``,
bptt's ``loss_and_grad`` under ``jax.jit`` (each recurrence one ``lax.scan``); and at
the sizes named by ``--unrolled``, ``bptt[jax.jit,unrolled]`` (a program that grows
with T). Blocks of at least ``--min-block`` seconds alternate between the contenders
within each round; the table shows medians over the rounds of the wall-clock ms per
call and of the process's CPU ms per call (user + system, all threads: steadier than
the wall clock on a machine other work shares), their ratios to the hand-written
scan, and the minor page faults per call. By default the process first calls
:func:`bptt.host.malloc.keep_large_blocks` (every contender runs under it); ``--malloc tune``
calls :func:`bptt.host.malloc.tune_malloc` alone, as ``bench_step.py`` does, and
``--malloc default`` neither.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import statistics
import sys
import time
from typing import Any

from bench_cases import MALLOC_MODES, SIZES, jax_bptt_case, jax_case, parse_size, set_malloc

__all__ = ["main"]


def _usage() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def _block(step: Any, min_block: float) -> tuple[float, float, float]:
    """(wall ms, CPU ms, faults) per call over one block."""
    c0, f0 = _usage()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < min_block:
        step()
        n += 1
    wall = time.perf_counter() - t0
    c1, f1 = _usage()
    return wall / n * 1e3, (c1 - c0) / n * 1e3, (f1 - f0) / n


def _cases(label: str, unrolled: bool) -> list[Any]:
    _, size = parse_size(label)
    cases = [jax_case(size, "float32"), jax_bptt_case(size, "float32")]
    if unrolled:
        cases.append(jax_bptt_case(size, "float32", schedule="unrolled"))
    return cases


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jax_step.py", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--sizes", default="S1,S2,S3", help=f"{','.join(SIZES)} or BxTxDxMxC, comma-separated")
    add("--unrolled", default="S1,S2", help="sizes that also run bptt's unrolled program")
    add("--reps", type=int, default=9, help="interleaved rounds (medians over them)")
    add("--min-block", type=float, default=0.3, help="seconds per timed block, at least")
    add("--malloc", choices=MALLOC_MODES, default="keep",
        help="keep_large_blocks (default), tune_malloc alone, or glibc's defaults")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    took = set_malloc(args.malloc)  # before JAX starts its threads
    import jax

    unrolled = set(args.unrolled.split(",")) if args.unrolled else set()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")  # fmt: skip
    print(f"# {datetime.datetime.now().isoformat(timespec='minutes')}, {cpu}, JAX "
          f"{jax.__version__}, float32, malloc {args.malloc} ({took}), medians of "
          f"{args.reps} interleaved rounds of blocks >= {args.min_block} s")  # fmt: skip
    print("# python benchmarks/jax_step.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print("| size | contender | first call s | wall ms | cpu ms | wall / jax | cpu / jax "
          "| faults/call | load |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label in args.sizes.split(","):
        cases = _cases(label, label in unrolled)
        got: dict[str, list[tuple[float, float, float]]] = {c.name: [] for c in cases}
        for _ in range(args.reps):
            for case in cases:
                got[case.name].append(_block(case.step, args.min_block))
        load = open("/proc/loadavg").read().split()[0]
        med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in got.items()}
        base = med[cases[0].name]
        for case in cases:
            wall, cpu_ms, faults = med[case.name]
            print(f"| {label} | {case.name} | {case.first_call_s:.2f} | {wall:.2f} | "
                  f"{cpu_ms:.2f} | {wall / base[0]:.2f} | {cpu_ms / base[1]:.2f} | "
                  f"{faults:.0f} | {load} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
