"""One training step of a one-layer GRU and LSTM: bptt's cells on NumPy against torch.

A step is forward + backward for the softmax head (mean cross-entropy), token-id
inputs, biases on, float32, at the sizes of ``bench_cases.py`` (S1-S3):

- ``bptt generic``: :mod:`bptt.math.gru` / :mod:`bptt.math.lstm` composed with
  ``bptt.math.model`` (the input projection as a gather, the output layer) and
  ``bptt.math.heads`` (as the
  integrator's generic stack will compose them), on NumPy arrays;
- ``bptt NumPy fast path``: the same with the recurrences of
  :mod:`bptt.execution.numpy_exec.gated` (the same bits, written through ``out=``);
- ``bptt library``: what a user calls, ``bptt.RNN(M, D, C, cell=...).loss_and_grad``
  under its ``"auto"`` schedule (named in the table; ``"split"`` runs the batch in
  parts on two threads);
- ``torch``: ``torch.nn.GRU`` / ``torch.nn.LSTM`` + ``Linear`` + ``CrossEntropyLoss`` +
  ``backward()`` (autograd), one-hot inputs made once, outside the timing.

glibc's malloc is set for the process by ``--malloc`` (default ``keep``:
``bptt.host.malloc.keep_large_blocks``): from S3 on the steps' (T, B, 4D) arrays pass
glibc's 32 MiB mmap cap, and under ``tune`` both libraries fault them in afresh at each
call, torch more than bptt (benchmarks/NOTES.md, round 7g).

Contenders run interleaved (``bench_timing.time_blocks``, or :func:`cpu_blocks` with
``--clock cpu``); the table gives the median ms per step over the blocks and torch /
bptt (> 1: bptt is faster).

    .venv/bin/python benchmarks/gated_step.py                 # S1 S2 S3, both cells
    .venv/bin/python benchmarks/gated_step.py --sizes S1 --cells gru --reps 9
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/gated_step.py --clock cpu
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from bench_cases import MALLOC_MODES, SIZES, Size, data, parse_size, set_malloc
from bench_timing import Case, stats, time_blocks

import bptt
from bptt.execution import schedules
from bptt.execution.numpy_exec import gated
from bptt.math import gru, heads, lstm, model

CELLS = {"gru": gru, "lstm": lstm}


def bptt_step(cell: Any, size: Size, seed: int = 0, fast: bool = False) -> Callable[[], Any]:
    """Our one-layer step on NumPy float32: the loss and every gradient; ``fast``: the
    recurrences of :mod:`bptt.execution.numpy_exec.gated` (the same bits)."""
    name = cell.__name__.rsplit(".", 1)[-1]
    forward, reverse = cell.recurrence, cell.reverse_recurrence
    if fast:
        forward = getattr(gated, f"{name}_recurrence")
        reverse = getattr(gated, f"{name}_reverse_recurrence")
    rng = np.random.default_rng(seed)
    s = np.float32(1 / np.sqrt(size.D))
    p = {k: rng.uniform(-s, s, shape).astype(np.float32)
         for k, shape in cell.param_shapes(size.M, size.D).items()}  # fmt: skip
    p["V"] = rng.uniform(-s, s, (size.C, size.D)).astype(np.float32)
    p["c"] = np.zeros(size.C, np.float32)
    x, y = data(size, seed)
    weight = heads.loss_weights(None, (size.T, size.B, size.C), head="softmax",
                                reduction="mean", dtype=np.float32, xp=np)  # fmt: skip

    def step() -> Any:
        xu = model.input_projection(p, x, np)  # (T, B, G D): a gather
        H, aux, _ = forward(p, xu, None, np)
        logits, _ = model.output(p, H[1:], None, np)
        terms, dlogits = heads.softmax_cross_entropy(logits, y, np)
        loss, dlogits = heads.reduce(terms, dlogits, weight, np)
        grads = model.output_grads(p, dlogits, H[1:], np)
        dS = model.state_grads(p, dlogits, None, np)
        dXU, dHW, _ = reverse(p, H, aux, dS, np)
        grads.update(cell.weight_grads(p, dXU, dHW, H, x, np))
        return loss, grads

    return step


def library_step(name: str, size: Size, seed: int = 0) -> tuple[Callable[[], Any], str]:
    """``bptt.RNN(cell=name).loss_and_grad`` on NumPy float32, and the schedule "auto" runs."""
    model = bptt.RNN(size.M, size.D, size.C, cell=name)
    params = model.init(seed=seed, dtype="float32")
    x, y = data(size, seed)
    chosen, _ = schedules.resolve(None, np, size.T, size.B, size.D, 4,
                                  single=model.single_vanilla)  # fmt: skip
    return lambda: model.loss_and_grad(params, x, y, check_values=False), chosen


def torch_step(name: str, size: Size, seed: int = 0) -> Callable[[], Any]:
    """torch.nn.GRU / LSTM + Linear + CrossEntropyLoss + backward, float32 on the CPU."""
    import torch

    torch.manual_seed(seed)
    rnn = (torch.nn.GRU if name == "gru" else torch.nn.LSTM)(size.M, size.D)
    lin = torch.nn.Linear(size.D, size.C)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = (torch.as_tensor(a) for a in data(size, seed))
    X = torch.nn.functional.one_hot(x, size.M).float()  # (T, B, M), outside the timing
    Y = y.reshape(-1)
    params = [*rnn.parameters(), *lin.parameters()]

    def step() -> Any:
        for q in params:
            q.grad = None
        out, _ = rnn(X)
        loss = loss_fn(lin(out).reshape(-1, size.C), Y)
        loss.backward()
        return loss

    return step


def cpu_blocks(steps: list[Callable[[], Any]], reps: int) -> list[float]:
    """Median CPU ms (``time.process_time``: all of this process's threads) per call,
    interleaved A B A B ..., each timed call after one untimed one. On a shared
    machine this is steadier than the wall clock: time spent waiting for a core is
    not counted (with one thread it is the compute of the step)."""
    samples: list[list[float]] = [[] for _ in steps]
    for step in steps:
        step()
    for _ in range(reps):
        for k, step in enumerate(steps):
            step()
            t0 = time.process_time()
            step()
            samples[k].append((time.process_time() - t0) * 1e3)
    return [float(np.median(s)) for s in samples]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES),
                        help="S1 S2 S3, or BxTxDxMxC such as 4x5x8x6x6")  # fmt: skip
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--reps", type=int, default=5, help="blocks per contender")
    parser.add_argument("--min-block", type=float, default=0.5, help="seconds per block")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: bench_timing's interleaved blocks (perf_counter); cpu: "
                        "process CPU time per call (steadier on a shared machine)")  # fmt: skip
    parser.add_argument("--malloc", choices=MALLOC_MODES, default="keep",
                        help="every contender under bptt.host.malloc.keep_large_blocks "
                        "(default), tune_malloc, or glibc's defaults")  # fmt: skip
    parser.add_argument("--default-malloc", action="store_true", help="= --malloc default")
    args = parser.parse_args(argv)
    mode = "default" if args.default_malloc else args.malloc
    tuned = "default" if mode == "default" else f"{mode} ({set_malloc(mode)})"
    import torch

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or ''}"
          f" numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), float32, median {args.clock} ms per step over {args.reps} interleaved "
          f"blocks, malloc {tuned}")  # fmt: skip
    print("| size | cell | bptt generic ms | bptt NumPy fast path ms | bptt library ms "
          "| schedule | torch ms | torch / generic | torch / fast | torch / library |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for text in args.sizes:
        label, size = parse_size(text)
        for name in args.cells:
            library, chosen = library_step(name, size)
            steps = [bptt_step(CELLS[name], size), bptt_step(CELLS[name], size, fast=True),
                     library, torch_step(name, size)]  # fmt: skip
            if args.clock == "cpu":
                ours, fast, lib, theirs = cpu_blocks(steps, args.reps)
            else:
                names = ("bptt", "fast", "library", "torch")
                cases = [Case(n, s) for n, s in zip(names, steps, strict=True)]
                time_blocks(cases, reps=args.reps, pause=0.05, min_block=args.min_block)
                ours, fast, lib, theirs = (stats(c.samples)["median"] for c in cases)
            print(f"| {label} {tuple(size)} | {name} | {ours:.2f} | {fast:.2f} | {lib:.2f} | "
                  f"{chosen} | {theirs:.2f} | {theirs / ours:.2f} | {theirs / fast:.2f} | "
                  f"{theirs / lib:.2f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
