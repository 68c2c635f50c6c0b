"""Data-parallel training on one machine: 1 rank (two threads) against N ranks over MPI.

    python benchmarks/mpi_scaling.py --sizes S1,S2,S3 --steps 30 --rounds 5

For each size (B, T, D, M=C from ``bench_cases.SIZES``; float32, Adam, NumPy) and
round, two jobs run one after the other, in alternating order: ``1 rank``, one process
on the whole batch with the library's default threads (``bptt train``'s path today),
and ``N ranks``, ``mpiexec -n N`` processes on B/N streams each, each given its share
of the CPUs as ``bptt train`` gives it (:func:`bptt.train.distributed.share_cpus`). Each job
builds the :class:`bptt.train.Trainer` that ``bptt train`` builds, runs 3 untimed
steps, then times ``--steps`` steps one by one (``Trainer.advance``, the loss read back
after each). The table gives the median over rounds of each job's median step time,
the steps per second, the ranks' speed over one rank's in the same round, and the
all-reduce's share of the ranks' step: ``in step`` is the time the step spent in the
all-reduce call (waiting for the slower rank included), ``alone`` the same all-reduce
of a buffer of the gradient's size timed on its own after the steps (the transfer
itself). The text is random characters over M = C symbols, so that every size has its
vocabulary. Needs ``pip install 'bptt[mpi]'`` (mpi4py and mpiexec).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_cases import parse_size

HERE = Path(__file__).resolve().parent


def _text(symbols: int, chars: int, path: Path) -> None:
    """Random characters over ``symbols`` distinct code points (reproducible)."""
    alphabet = np.array([chr(0x100 + i) for i in range(symbols)])
    ids = np.random.default_rng(0).integers(0, symbols, size=chars)
    path.write_text("".join(alphabet[ids]), encoding="utf-8")


def worker(size_text: str, steps: int, text: str, out: str) -> None:
    """One job (one rank of it): time ``steps`` training steps; rank 0 writes JSON."""
    from bptt import train
    from bptt.text.data import load_corpus
    from bptt.train import distributed

    _, s = parse_size(size_text)
    comm = distributed.Local()
    if distributed.launched_size() > 1:
        comm = distributed.Communicator(timeout=600)
        distributed.share_cpus(comm)  # what bptt train does: its share of the CPUs
    corpus = load_corpus(text=text)
    cfg = train.TrainConfig(hidden=s.D, batch=s.B, seq_len=s.T, dtype="float32", seed=0)
    trainer = train.Trainer.create(corpus, cfg, backend="numpy", comm=comm)
    be = trainer.backend
    for _ in range(3):
        be.to_numpy(trainer.advance()[0])
    reduce_before = getattr(trainer.train_step, "reduce_seconds", 0.0)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        be.to_numpy(trainer.advance()[0])  # the step's loss on the host: it is done
        times.append(time.perf_counter() - t0)
    in_step = (getattr(trainer.train_step, "reduce_seconds", 0.0) - reduce_before) / steps
    alone = _allreduce_alone(comm, trainer.state.layout.size + 1, steps)
    if comm.is_root:
        Path(out).write_text(json.dumps({
            "step_s": statistics.median(times), "reduce_in_step_s": in_step,
            "reduce_alone_s": alone, "params": trainer.state.layout.size,
            "threads": os.environ.get("BPTT_THREADS", "default"),
        }))  # fmt: skip


def _allreduce_alone(comm, n: int, repeats: int) -> float | None:
    """Median time of the gradient all-reduce of ``n`` float32 on its own (None: 1 rank)."""
    if comm.size == 1:
        return None
    buf = np.ones(n, dtype=np.float32)
    times = []
    for _ in range(repeats):
        comm.comm.Barrier()
        t0 = time.perf_counter()
        comm.allreduce_host(buf)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _job(ranks: int, size: str, steps: int, text: Path, mpiexec: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, str(Path(__file__)), "--worker", size, "--steps", str(steps),
                "--text", str(text), "--out", str(out)]  # fmt: skip
        if ranks > 1:
            argv = [mpiexec, "-n", str(ranks), *argv]
        env = {k: v for k, v in os.environ.items() if k != "BPTT_THREADS"}
        subprocess.run(argv, check=True, env=env, timeout=1800)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="S1,S2,S3")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--text", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.text, args.out)
    mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}"
                           f"{os.environ.get('PATH', '')}")  # fmt: skip
    if mpiexec is None:
        raise SystemExit("mpiexec not found: pip install 'bptt[mpi]'")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"1 rank vs {args.ranks} ranks, {args.steps} steps x {args.rounds} rounds")  # fmt: skip
    print(
        "| size (B, T, D, M=C) | params | 1 rank ms | steps/s | "
        f"{args.ranks} ranks ms | steps/s | speed-up | all-reduce in step | alone |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes.split(","):
            _, s = parse_size(name)
            text = Path(tmp) / f"{name}.txt"
            _text(s.C, max(200_000, 2 * (args.steps + 4) * s.B * s.T), text)
            one, many, ratio = [], [], []
            for r in range(args.rounds):
                order = (1, args.ranks) if r % 2 == 0 else (args.ranks, 1)
                got = {n: _job(n, name, args.steps, text, mpiexec) for n in order}
                one.append(got[1]["step_s"])
                many.append(got[args.ranks])
                ratio.append(got[1]["step_s"] / got[args.ranks]["step_s"])
            m1 = statistics.median(one)
            mn = statistics.median(x["step_s"] for x in many)
            share = statistics.median(x["reduce_in_step_s"] / x["step_s"] for x in many)
            alone = statistics.median(x["reduce_alone_s"] for x in many)
            print(f"| {name} ({s.B}, {s.T}, {s.D}, {s.C}) | {many[0]['params']:,} | "
                  f"{1e3 * m1:.2f} | {1 / m1:.1f} | {1e3 * mn:.2f} | {1 / mn:.1f} | "
                  f"{statistics.median(ratio):.2f}x | {100 * share:.1f}% | "
                  f"{1e3 * alone:.3f} ms |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
