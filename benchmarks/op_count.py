"""Array operations per training step, counted on the proxy (benchmarks/proxy.py).

The step ``bptt train`` runs (:func:`bptt.train.make_train_step`: loss and
gradients, clipping, the optimizer, over one flat parameter vector) on proxy arrays
over array_api_strict's ``device1``; the second step's counts are reported (the first
includes nothing more, but a steady state is what a GPU sees every step). Kernels are
operations that launch device work; views launch none (``benchmarks/proxy.py``).

Run: ``python benchmarks/op_count.py [--T 25,100,200] [--dropout 0.2]``. The same
count is held exactly by tests/test_sync_free.py: 6 T + 62 kernels at the defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from proxy import Array, Namespace

from bptt import backends
from bptt.math.flat import Layout
from bptt.train import TrainCarry, TrainConfig, make_train_step


def count(T: int, *, B: int = 3, D: int = 4, M: int = 5, **options: Any) -> dict[str, int]:
    """Kernels, views and host-to-device transfers of one steady-state training step
    (the defaults of :class:`bptt.train.TrainConfig`, overridden by ``options``)."""
    be = backends.get_backend("array_api_strict", "device1")
    ns = Namespace(be.xp)
    config = TrainConfig(hidden=D, batch=B, seq_len=T, **options)
    model = config.model(M)
    host = model.init(dtype=config.dtype, seed=0, backend=be.name, device=be.device)
    params = {k: Array(v, ns) for k, v in host.items()}
    layout, opt = Layout.of(params), config.make_optimizer()
    flat = layout.flatten(params, ns)
    hidden = ns.zeros((B, D), dtype=flat.dtype, device=be.device)
    carry = TrainCarry(
        flat, opt.init(flat), hidden, ns.zeros((), dtype=be.integer, device=be.device)
    )
    step = make_train_step(opt, layout, dropout=config.dropout, seed=config.seed, model=model)
    rng = np.random.default_rng(0)
    x = Array(be.asarray(rng.integers(0, M, (T, B))), ns)
    y = Array(be.asarray(rng.integers(0, M, (T, B))), ns)
    for _ in range(2):
        ns.clear()
        carry, _, _ = step(carry, x, y)
    return {"kernels": ns.kernels(), "views": ns.views(), "transfers": ns.transfers}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", default="25,100,200", help="sequence lengths, comma-separated")
    parser.add_argument("--dropout", type=float, default=0.0)
    args = parser.parse_args(argv)
    print("T     kernels  6T+60  views  host->device copies")
    for T in (int(t) for t in args.T.split(",")):
        c = count(T, dropout=args.dropout)
        print(f"{T:<5} {c['kernels']:>7}  {6 * T + 60:>5}  {c['views']:>5}  {c['transfers']:>3}")


if __name__ == "__main__":
    main()
