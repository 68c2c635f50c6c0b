"""The array-API step on NumPy against the NumPy-only yardstick, paired.

    python benchmarks/variant.py --sizes S1 --dtypes float32,float64 --rounds 15

``bptt.loss_and_grad`` and ``numpy_variant.py`` (``out=``, kept buffers) on the
same problem, alternating in rounds: a pause, one untimed call, then ``--calls`` timed
calls of one and then of the other. Prints each one's median time per call and the
median over rounds of their ratio (array-API over NumPy-only), which cancels most of a
shared machine's drift. glibc's malloc thresholds are raised first, as ``bench_step.py``
does (:mod:`bptt.host.malloc`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import numpy_variant
from bench_cases import parse_size

import bptt
from bptt.host import malloc


def _block(fn, calls: int) -> float:
    time.sleep(0.05)
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def compare(size: str, dtype: str, rounds: int, calls: int) -> tuple[list[float], list[float]]:
    _, s = parse_size(size)
    params = bptt.init_params(s.M, s.D, s.C, dtype=dtype, backend="numpy")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, s.M, (s.T, s.B)), rng.integers(0, s.C, (s.T, s.B))
    generic = lambda: bptt.loss_and_grad(params, x, y, check_values=False)  # noqa: E731
    variant = lambda: numpy_variant.loss_and_grad(params, x, y)  # noqa: E731
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(_block(generic, calls))
        theirs.append(_block(variant, calls))
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="S1", help="S1,S2,S3 or BxTxDxMxC")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=0, help="per block (0: about 0.5 s)")
    args = parser.parse_args()
    malloc.tune_malloc()
    print(f"{'size':4} {'dtype':8} {'array-API ms':>12} {'NumPy-only ms':>13} {'ratio':>6}")
    for dtype in args.dtypes.split(","):
        for size in args.sizes.split(","):
            calls = args.calls
            if calls <= 0:  # about half a second per block, from one round of 3 calls
                ours, _ = compare(size, dtype, 1, 3)
                calls = max(1, round(500 / ours[0]))
            ours, theirs = compare(size, dtype, args.rounds, calls)
            ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
            a, b = statistics.median(ours), statistics.median(theirs)
            print(f"{size:4} {dtype:8} {a:12.3f} {b:13.3f} {ratio:6.3f}")


if __name__ == "__main__":
    main()
