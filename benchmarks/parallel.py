"""NumPy's schedules of one step, paired: single, overlap, split and auto.

    python benchmarks/parallel.py --sizes S1,S2,S3 --dtypes float32,float64 --reps 9

For each size, ``loss_and_grad`` (softmax head, token ids) runs under each schedule
in turn (``schedule=``, :mod:`bptt.execution.schedules`), in rounds (a pause, one untimed call,
then the median of 3 timed calls per schedule): ``single`` (one block),
``overlap`` and ``split`` (forced: :mod:`bptt.execution.numpy_exec`), ``auto`` (the library's
choice). The table gives each schedule's layout (parts of the batch x blocks of
steps), its median over the rounds and the median over rounds of its time divided
by the first schedule's time in the same round, which cancels most of a shared
machine's drift. ``--size B,T,D,C`` adds a size of your own.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np
from bench_cases import SIZES

import bptt
from bptt.execution import schedules
from bptt.execution.numpy_exec import policy
from bptt.host import malloc

MODES = schedules.SCHEDULES  # ("auto", "single", "overlap", "split")


def _time(fn, calls: int = 3) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def compare(
    shape: tuple[int, int, int, int], dtype: str, modes: list[str], reps: int
) -> dict[str, list[float]]:
    B, T, D, C = shape
    rng = np.random.default_rng(0)
    params = bptt.init_params(C, D, C, dtype=dtype, backend="numpy")
    x, y = rng.integers(0, C, (T, B)), rng.integers(0, C, (T, B))

    def step(schedule: str) -> None:
        bptt.loss_and_grad(params, x, y, check_values=False, schedule=schedule)

    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(reps):
        for name in modes:
            time.sleep(0.05)
            times[name].append(_time(functools.partial(step, name)))
    return times


def layout(name: str, shape: tuple[int, int, int, int], dtype: str) -> str:
    """How schedule ``name`` runs a step of this shape: parts of the batch x blocks of steps."""
    B, T, D, _ = shape
    forced = name != "auto"
    if not forced:
        name = policy.choose(T, B, D, np.dtype(dtype).itemsize)
    if name == "split":
        return f"{len(policy.batch_parts(B, forced=forced))}x1"
    if name == "overlap":
        return f"1x{len(policy.time_blocks(T, forced=forced))}"
    return "1x1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="S1,S2,S3")
    parser.add_argument("--size", action="append", default=[], metavar="B,T,D,C")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--modes", default="single,overlap,split,auto")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    modes = args.modes.split(",")
    for name in modes:
        if name not in MODES:
            parser.error(f"unknown mode {name!r}; choose from {', '.join(MODES)}")
    shapes = {s: tuple(getattr(SIZES[s], k) for k in "BTDC") for s in args.sizes.split(",") if s}
    shapes.update({s: tuple(int(v) for v in s.split(",")) for s in args.size})
    malloc.tune_malloc()  # as bench_step.py and bptt train do
    print(f"{'size':16} {'dtype':8} {'mode':7} {'layout':>6} {'ms':>9} {'vs ' + modes[0]:>8}")
    for dtype in args.dtypes.split(","):
        for size, shape in shapes.items():
            times = compare(shape, dtype, modes, args.reps)
            for name in modes:
                ratio = statistics.median(
                    a / b for a, b in zip(times[name], times[modes[0]], strict=True)
                )
                ms, how = statistics.median(times[name]), layout(name, shape, dtype)
                print(f"{size:16} {dtype:8} {name:7} {how:>6} {ms:9.2f} {ratio:8.2f}")


if __name__ == "__main__":
    main()
