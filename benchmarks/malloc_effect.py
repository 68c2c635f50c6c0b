"""The effect of ``--tune-malloc`` on the training step: time and minor page faults.

Run it alternately, one process per setting (mallopt cannot be undone in a process)::

    for i in 1 2 3 4; do python benchmarks/malloc_effect.py default;
                         python benchmarks/malloc_effect.py tuned; done

Prints the setting, the mean ms per step over 30 steps (after 3 untimed) and the
minor page faults per step, for the training step ``bptt train`` runs (S2 float32:
B=64, T=100, D=256, 128 symbols, Adam with clipping, the hidden state carried).
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

import bptt
from bptt.math.flat import Layout
from bptt.train import TrainCarry, TrainConfig, make_train_step


def main(setting: str) -> None:
    if setting not in ("default", "tuned"):
        raise SystemExit("usage: malloc_effect.py default|tuned")
    if setting == "tuned":
        from bptt.host.malloc import tune_malloc

        tune_malloc()
    B, T, D, M = 64, 100, 256, 128
    model = bptt.RNN(M, D, M)
    params = model.init(dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, M, (T, B)), rng.integers(0, M, (T, B))
    layout = Layout.of(params)
    flat = layout.flatten(params, np)
    opt = TrainConfig(hidden=D, batch=B, seq_len=T).make_optimizer()
    carry = TrainCarry(flat, opt.init(flat), np.zeros((B, D), np.float32), np.zeros((), np.int64))
    step = make_train_step(opt, layout, model=model)
    for _ in range(3):
        carry, _, _ = step(carry, x, y)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for _ in range(30):
        carry, _, _ = step(carry, x, y)
    ms = (time.perf_counter() - t0) / 30 * 1e3
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // 30
    print(f"{setting} {ms:.2f} ms/step {faults} faults/step")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
