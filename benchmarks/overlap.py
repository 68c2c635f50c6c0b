"""The overlapped step against the one-block step, paired, on NumPy.

    python benchmarks/overlap.py --sizes S1,S2,S3 --dtypes float32,float64 --reps 9

For each size, ``loss_and_grad`` (softmax head, token ids) runs with
``BPTT_OVERLAP`` set to each mode in turn, in rounds (a pause, one untimed call,
then the median of 3 timed calls per mode); the table gives each mode's median
over the rounds and the median over rounds of its time divided by the first
mode's time in the same round, which cancels most of a shared machine's drift.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import bptt
from bptt import _parallel
from bptt.bench import SIZES


def _time(fn, calls: int = 3) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def compare(size: str, dtype: str, modes: list[str], reps: int) -> dict[str, list[float]]:
    B, T, D, C = (getattr(SIZES[size], k) for k in ("B", "T", "D", "C"))
    rng = np.random.default_rng(0)
    params = bptt.init_params(C, D, C, dtype=dtype, backend="numpy")
    x, y = rng.integers(0, C, (T, B)), rng.integers(0, C, (T, B))
    step = lambda: bptt.loss_and_grad(params, x, y, check_values=False)  # noqa: E731
    times: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for _ in range(reps):
            for mode in modes:
                _parallel.set_overlap(mode)
                time.sleep(0.05)
                times[mode].append(_time(step))
    finally:
        _parallel.set_overlap(None)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="S1,S2,S3")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--modes", default="off,on,auto")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    modes = args.modes.split(",")
    print(f"{'size':4} {'dtype':8} {'mode':5} {'blocks':>6} {'ms':>8} {'vs ' + modes[0]:>8}")
    for dtype in args.dtypes.split(","):
        for size in args.sizes.split(","):
            B, T, D = SIZES[size].B, SIZES[size].T, SIZES[size].D
            times = compare(size, dtype, modes, args.reps)
            for mode in modes:
                _parallel.set_overlap(mode)
                blocks = len(_parallel.time_blocks(np, T, B, D))
                _parallel.set_overlap(None)
                ratio = statistics.median(
                    a / b for a, b in zip(times[mode], times[modes[0]], strict=True)
                )
                ms = statistics.median(times[mode])
                print(f"{size:4} {dtype:8} {mode:5} {blocks:6d} {ms:8.2f} {ratio:8.2f}")


if __name__ == "__main__":
    main()
