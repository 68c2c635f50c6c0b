"""The vanishing-gradient picture of each cell, side by side: mean ||dL_t/dh_k|| by lag
t - k (and, for LSTM, ||dL_t/dc_k||, the flow through the cell state) for a tanh, a GRU
and an LSTM model of the same width, each trained the same number of steps on the
built-in text, measured on one batch of held-out windows.

Run: ``python benchmarks/gradient_flow_cells.py [--steps 400] [--hidden 128]
[--seq-len 100] [--plot docs/img/gradient-flow-cells.png]``: prints a table of the
lag means (each relative to its lag 0) and draws the curves.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bptt import backends, train
from bptt.evaluation.diagnostics import gradient_flow
from bptt.text import data

LAGS = (0, 1, 2, 5, 10, 20, 50, 99)


def measure(cell: str, args: argparse.Namespace, corpus: data.Corpus) -> dict:
    """Train ``cell`` for ``args.steps`` steps, then its gradient flow on held-out windows."""
    config = train.TrainConfig(hidden=args.hidden, cell=cell, seq_len=args.seq_len,
                               batch=32, eval_every=10**6, log_every=50, seed=args.seed,
                               dtype="float64")  # fmt: skip
    be = backends.get_backend("numpy")
    trainer = train.Trainer.create(corpus, config, backend=be)
    t0 = time.perf_counter()
    trainer.run(steps=args.steps)
    seconds = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    T, B, ids = args.seq_len, args.batch, corpus.val
    starts = rng.integers(0, len(ids) - T - 1, B)
    windows = np.stack([ids[s : s + T + 1] for s in starts], axis=1)  # (T + 1, B)
    flow = gradient_flow(trainer.model, trainer.params, windows[:-1], windows[1:])
    val = trainer.validate()
    cells = None if flow.cell_lag_mean is None else np.asarray(flow.cell_lag_mean)
    return {"cell": cell, "lag_mean": np.asarray(flow.lag_mean), "cell_lag_mean": cells,
            "val_bpc": val, "seconds": seconds}  # fmt: skip


def table(results: list[dict]) -> str:
    shown = [lag for lag in LAGS if lag < len(results[0]["lag_mean"])]
    head = "| curve | val bits/char | " + " | ".join(f"lag {lag}" for lag in shown) + " |"
    lines = [head, "|" + " --- |" * (2 + len(shown))]
    for r in results:
        curves = [("h", r["lag_mean"])]
        if r["cell_lag_mean"] is not None:
            curves.append(("c (cell state)", r["cell_lag_mean"]))
        for name, lag in curves:
            cells = " | ".join(f"{lag[k] / lag[0]:.2e}" for k in shown)
            lines.append(f"| {r['cell']} {name} | {r['val_bpc']:.3f} | {cells} |")
    return "\n".join(lines)


def plot(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for i, r in enumerate(results):
        lags = np.arange(len(r["lag_mean"]))
        ax.semilogy(lags, r["lag_mean"] / r["lag_mean"][0], color=f"C{i}", lw=2,
                    label=f"{r['cell']}: ||dL_t/dh_k||")  # fmt: skip
        if r["cell_lag_mean"] is not None:
            c = r["cell_lag_mean"]
            ax.semilogy(lags, c / c[0], color=f"C{i}", lw=2, ls="--",
                        label=f"{r['cell']}: ||dL_t/dc_k|| (cell state)")  # fmt: skip
    ax.set_xlabel("lag t - k")
    ax.set_ylabel("mean norm, relative to lag 0")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cells", default="tanh,gru,lstm")
    parser.add_argument("--plot", help="write the curves to this PNG")
    args = parser.parse_args(argv)
    corpus = data.load_corpus(corpus="topics")
    results = [measure(cell, args, corpus) for cell in args.cells.split(",")]
    print(f"D = {args.hidden}, {args.steps} training steps each (float64, B = 32, "
          f"T = {args.seq_len}); flow on {args.batch} held-out windows")  # fmt: skip
    print(table(results))
    for r in results:
        print(f"  {r['cell']}: trained in {r['seconds']:.0f} s")
    if args.plot:
        title = f"D = {args.hidden}, {args.steps} steps on the built-in text, T = {args.seq_len}"
        plot(results, args.plot, title)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
