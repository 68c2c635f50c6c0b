"""Memory-bounded BPTT: peak bytes allocated by one step, and its time, over T and ``remat``.

    python benchmarks/remat_memory.py --T 100,1000,10000 --B 32 --D 256 --reps 3

One step is ``model.loss_and_grad`` (forward, softmax head, backward; token ids in,
a vocabulary of ``--vocab``) on NumPy, float32, with ``schedule="single"`` for every
setting (the same execution: the single schedule, no overlap; run it with
OPENBLAS_NUM_THREADS=1 on a shared machine, where two BLAS threads thrash). Peak
bytes: ``tracemalloc`` (which sees NumPy's array allocations) around the step, minus
what was allocated before it (parameters, inputs, targets): what the step itself
holds at its highest, not RSS. Time: median of ``--reps`` interleaved rounds (every
setting once per round, the order rotated), traced apart from the memory runs
(tracemalloc slows allocation). ``ratio``: time / full BPTT's time in the same
round. ``cost``: forward steps run by the plan (T without recomputation);
``slots``: the plan's peak of states held (:func:`bptt.math.remat.plan`). Settings: None,
k = 10 and 100, ``"sqrt"``, and the dynamic program at sqrt's slots and at half of
them (``budget:m``). ``--budget-mib`` names the memory budget of the last column.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import statistics
import time
import tracemalloc
from typing import Any

import numpy as np

import bptt
from bptt.math.remat import REPLAY_SLOTS, plan

__all__ = ["main", "measure"]


def settings_for(T: int) -> list[Any]:
    """None, 10, 100, sqrt, and the DP at sqrt's slots and half of them."""
    sqrt_slots = plan(T, "sqrt").peak
    out: list[Any] = [None, 10, 100, "sqrt", f"budget:{sqrt_slots}"]
    out.append(f"budget:{max(2, sqrt_slots // 2)}")
    return [s for s in out if not (isinstance(s, int) and s >= T)]


def _problem(T: int, B: int, D: int, V: int) -> tuple[Any, ...]:
    model = bptt.RNN(V, D, V)
    params = model.init(seed=0, dtype="float32")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    return model, params, x, y


def _step(model: Any, params: Any, x: Any, y: Any, remat: Any) -> Any:
    return model.loss_and_grad(params, x, y, check_values=False, schedule="single", remat=remat)


def measure(T: int, B: int, D: int, V: int, setting: Any) -> int:
    """Peak bytes the step allocates beyond what existed before it."""
    model, params, x, y = _problem(T, B, D, V)
    if setting is not None:
        plan(T, setting)  # the host's DP table is not the step's memory
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    out = _step(model, params, x, y, setting)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return peak - before


def timings(T: int, B: int, D: int, V: int, settings: list[Any], reps: int) -> dict[Any, Any]:
    model, params, x, y = _problem(T, B, D, V)
    times: dict[Any, list[float]] = {s: [] for s in settings}
    ratios: dict[Any, list[float]] = {s: [] for s in settings}
    _step(model, params, x, y, None)  # warm up
    for r in range(reps):
        order = settings[r % len(settings) :] + settings[: r % len(settings)]
        round_times = {}
        for s in order:
            start = time.perf_counter()
            _step(model, params, x, y, s)
            round_times[s] = time.perf_counter() - start
        for s in settings:
            times[s].append(round_times[s])
            ratios[s].append(round_times[s] / round_times[None])
    return {s: (statistics.median(times[s]), statistics.median(ratios[s])) for s in settings}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", default="100,1000,10000")
    parser.add_argument("--B", type=int, default=32)
    parser.add_argument("--D", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3, help="0: peak memory only")
    parser.add_argument("--budget-mib", type=float, default=64.0)
    parser.add_argument("--settings", default=None, help="comma-separated (default: see above)")
    args = parser.parse_args(argv)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {cpu}, NumPy "
          f"{np.__version__}, B={args.B} D={args.D} vocab={args.vocab} float32, "
          f"median of {args.reps} interleaved rounds")  # fmt: skip
    print(f"| T | remat | cost | slots | peak MiB | % of full | s/step | x full | "
          f"fits {args.budget_mib:g} MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for T in (int(t) for t in args.T.split(",")):
        settings = settings_for(T) if args.settings is None else [
            None if s == "None" else s for s in args.settings.split(",")]  # fmt: skip
        peaks = {s: measure(T, args.B, args.D, args.vocab, s) for s in settings}
        times = (
            timings(T, args.B, args.D, args.vocab, settings, args.reps)
            if args.reps
            else {s: (float("nan"), float("nan")) for s in settings}
        )  # --reps 0: memory only
        for s in settings:
            p = plan(T, s) if s is not None else None
            cost, slots = (T, REPLAY_SLOTS * T) if p is None else (p.cost, p.peak)
            mib = peaks[s] / 2**20
            fits = "yes" if mib <= args.budget_mib else "no"
            print(f"| {T} | {s} | {cost} | {slots} | {mib:.1f} | "
                  f"{100 * peaks[s] / peaks[None]:.1f} | {times[s][0]:.3f} | "
                  f"{times[s][1]:.2f} | {fits} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
