"""A training step on two threads of one process against two processes, paired.

    python benchmarks/two_process.py --size 64,100,256,103 --steps 40 --rounds 7

``threads``: the library's step on the whole batch (``bptt.loss_and_grad`` with its
``auto`` choice of overlap or split, then clipping and Adam). ``processes``: this
process and a spawned one each run the plain one-block ``loss_and_grad`` on half of
the streams with one BLAS thread; parameters, the other half's data and its gradients
pass through ``multiprocessing.shared_memory`` and one pipe message each way per step;
the halves' summed losses are added here, divided by T B (the whole batch's mean), then
clipped and stepped by the same Adam. Blocks of ``--steps`` steps alternate; the table
gives each mode's median time per step, characters per second (B T over that), and the
median over rounds of the time over ``threads``' in the same round. The first step of
``processes`` is checked against ``threads`` on the same parameters (to 1e-4).
This is a measurement, not a library path (benchmarks/NOTES.md, item 22).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from contextlib import nullcontext
from multiprocessing import shared_memory
from typing import Any

import numpy as np

import bptt
from bptt import optim
from bptt.host import malloc

KEYS = ("U", "W", "b", "V", "c")


def _layout(B: int, T: int, D: int, C: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Name -> (shape, dtype) of every array in the shared block, in order."""
    h = B - B // 2  # the spawned process's half
    shapes = {"U": (D, C), "W": (D, D), "b": (D,), "V": (C, D), "c": (C,)}
    out: dict[str, tuple[tuple[int, ...], Any]] = {k: (s, np.float32) for k, s in shapes.items()}
    out |= {f"d{k}": (s, np.float32) for k, s in shapes.items()}  # its half's gradients
    out |= {"x": ((T, h), np.int64), "y": ((T, h), np.int64), "h": ((h, D), np.float32)}
    out["loss"] = ((), np.float64)
    return out


def _offsets(layout: dict[str, tuple[tuple[int, ...], Any]]) -> tuple[list[int], int]:
    """Byte offset of each array (8-byte aligned) and the block's total size."""
    offsets, end = [], 0
    for shape, dtype in layout.values():
        offsets.append(end)
        end += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // 8) * 8
    return offsets, end


def _views(buf: Any, layout: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, np.ndarray]:
    offsets, _ = _offsets(layout)
    return {
        key: np.ndarray(shape, dtype, buf, offset)
        for (key, (shape, dtype)), offset in zip(layout.items(), offsets, strict=True)
    }


def _half(params: dict[str, np.ndarray], x: Any, y: Any, h: Any) -> tuple[Any, dict, Any]:
    return bptt.loss_and_grad(params, x, y, h0=h, reduction="sum", check_values=False)


def _serve(name: str, shape: tuple[int, int, int, int], conn: Any) -> None:
    """The spawned process: on each message, its half's step from the shared block."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    malloc.tune_malloc()
    block = shared_memory.SharedMemory(name=name)
    v = _views(block.buf, _layout(*shape))
    params = {k: v[k] for k in KEYS}
    while conn.recv():
        loss, grads, h_last = _half(params, v["x"], v["y"], v["h"])
        for k in KEYS:
            v[f"d{k}"][...] = grads[k]
        v["h"][...], v["loss"][...] = h_last, loss
        conn.send(True)
    del v, params
    block.close()


class TwoProcesses:
    """The batch's second half in a spawned process; ``step`` is one training step."""

    def __init__(self, shape: tuple[int, int, int, int]) -> None:
        self.shape, layout = shape, _layout(*shape)
        self.block = shared_memory.SharedMemory(create=True, size=_offsets(layout)[1])
        self.v = _views(self.block.buf, layout)
        self.v["h"][...] = 0
        self.conn, theirs = mp.get_context("spawn").Pipe()
        self.proc = mp.get_context("spawn").Process(
            target=_serve, args=(self.block.name, shape, theirs), daemon=True
        )
        self.proc.start()

    def loss_and_grad(self, params: dict, x: Any, y: Any, h: Any) -> tuple[Any, dict, Any]:
        B, T = self.shape[:2]
        for k in KEYS:
            self.v[k][...] = params[k]
        self.v["x"][...], self.v["y"][...] = x[:, B // 2 :], y[:, B // 2 :]
        self.conn.send(True)
        loss, grads, h_mine = _half(params, x[:, : B // 2], y[:, : B // 2], h[: B // 2])
        self.conn.recv()
        scale = np.float32(1 / (T * B))
        grads = {k: (grads[k] + self.v[f"d{k}"]) * scale for k in params}  # params' order
        h_last = np.concatenate([h_mine, self.v["h"]])  # (B, D)
        return (loss + self.v["loss"]) / (T * B), grads, h_last

    def close(self) -> None:
        self.conn.send(False)
        self.proc.join(10)
        del self.v
        self.block.close()
        self.block.unlink()


def _threads(params: dict, x: Any, y: Any, h: Any) -> tuple[Any, dict, Any]:
    return bptt.loss_and_grad(params, x, y, h0=h, check_values=False)


def run(shape: tuple[int, int, int, int], steps: int, rounds: int) -> dict[str, list[float]]:
    from threadpoolctl import threadpool_limits

    B, T, D, C = shape
    rng = np.random.default_rng(0)
    params = bptt.init_params(C, D, C, dtype="float32", backend="numpy")
    data = [(rng.integers(0, C, (T, B)), rng.integers(0, C, (T, B))) for _ in range(8)]
    two = TwoProcesses(shape)
    try:
        h = np.zeros((B, D), np.float32)
        with threadpool_limits(1):
            loss, grads, _ = two.loss_and_grad(params, *data[0], h)
        ref_loss, ref_grads, _ = _threads(params, *data[0], h)
        for k in KEYS:  # the halves add up to the whole batch's step
            np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        modes = {"threads": _threads, "processes": two.loss_and_grad}
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(rounds):
            for name, grad_fn in modes.items():
                p = dict(params)
                opt = optim.chain(optim.clip_by_global_norm(5.0), optim.adam(2e-3))
                state, h = opt.init(p), np.zeros((B, D), np.float32)
                time.sleep(0.05)
                with threadpool_limits(1) if name == "processes" else nullcontext():
                    took = []
                    for i in range(steps + 1):  # the first step is not timed
                        start = time.perf_counter()
                        _, g, h = grad_fn(p, *data[i % len(data)], h)
                        updates, state = opt.update(g, state, p)
                        p = optim.apply_updates(p, updates)
                        took.append(time.perf_counter() - start)
                times[name].append(statistics.median(took[1:]) * 1e3)
        return times
    finally:
        two.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="64,100,256,103", help="B,T,D,C")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per block")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.size.split(","))
    if len(shape) != 4 or shape[0] < 2:
        parser.error("--size B,T,D,C with B >= 2")
    malloc.tune_malloc()
    times = run(shape, args.steps, args.rounds)  # type: ignore[arg-type]
    B, T = shape[:2]
    print(f"{'mode':10} {'ms/step':>8} {'chars/s':>9} {'vs threads':>10}")
    for name, ms in times.items():
        ratio = statistics.median(a / b for a, b in zip(ms, times["threads"], strict=True))
        med = statistics.median(ms)
        print(f"{name:10} {med:8.2f} {B * T / med * 1e3:9.0f} {ratio:10.3f}")


if __name__ == "__main__":
    main()
