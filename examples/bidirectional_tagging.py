"""Tagging that needs the future: does this symbol occur again later in the sequence?

Input: a random string of ``--seq-len`` symbols from an alphabet of ``--symbols``
(token ids). Tag at position t: 1 when x_t occurs again in x_{t+1} .. x_T, else 0;
one sigmoid output per position (the sigmoid head). A model that reads left to
right cannot know the answer at t: the best it can do is guess from the position,
since P(tag = 1 | t) = 1 - (1 - 1/K)^(T - t) for K symbols, which gives the
accuracy ceiling printed below (76.9% for T = 20, K = 8). A bidirectional layer
(``bptt.init_params(..., bidirectional=True)``) reads the string from the end as
well: its reverse cell has seen x_{t+1} .. x_T when it reaches t, and needs only
to remember which symbols it has met. The same training, with one direction and
with two, on fresh batches (defaults: D = 32, 2000 Adam steps; README, "Examples")::

    python examples/bidirectional_tagging.py [--backend torch] [--steps 2000]
"""

from __future__ import annotations

import argparse

import numpy as np

import bptt
from bptt import backends, optim

TARGET_ACCURACY = 0.95  # bidirectional, held out; one direction cannot pass the ceiling


def make_batch(rng: np.random.Generator, T: int, K: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    """Symbols (T, B) int64 and tags (T, B) float: x_t occurs again after t."""
    x = rng.integers(0, K, (T, B))  # (T, B)
    later = np.zeros((T, B), dtype=bool)
    for t in range(T - 1):
        later[t] = np.any(x[t + 1 :] == x[t], axis=0)
    return x, later.astype(np.float64)


def ceiling_without_the_future(T: int, K: int) -> float:
    """The best per-position accuracy of any model that does not look ahead."""
    p = 1.0 - (1.0 - 1.0 / K) ** (T - 1 - np.arange(T))  # P(tag = 1) at position t
    return float(np.mean(np.maximum(p, 1.0 - p)))


def train(bidirectional: bool, be: backends.Backend, args: argparse.Namespace) -> float:
    """Held-out per-position accuracy after ``args.steps`` Adam steps."""
    T, K, dtype = args.seq_len, args.symbols, args.dtype
    params = bptt.init_params(K, args.hidden, 1, bidirectional=bidirectional, dtype=dtype,
                              seed=args.seed, backend=be.name, device=be.device)  # fmt: skip
    lr = optim.exponential_decay(args.lr, rate=0.3, every=max(1, args.steps))
    opt = optim.chain(optim.clip_by_global_norm(5.0), optim.adam(lr))
    state = opt.init(params)
    rng = np.random.default_rng(args.seed)
    for step in range(1, args.steps + 1):
        x, tags = make_batch(rng, T, K, args.batch)
        _, grads, _ = bptt.loss_and_grad(
            params, be.asarray(x), be.asarray(tags, dtype=dtype), head="sigmoid",
            nonlinearity=args.nonlinearity, check_values=step == 1,
        )  # fmt: skip
        updates, state = opt.update(grads, state, params)  # clip, then Adam
        params = optim.apply_updates(params, updates)
    x, tags = make_batch(np.random.default_rng(12345), T, K, 2000)  # held out
    _, logits = bptt.forward(params, be.asarray(x), nonlinearity=args.nonlinearity)
    predicted = np.asarray(be.to_numpy(logits))[..., 0] > 0  # sigm(g) > 1/2
    return float(np.mean(predicted == (tags > 0.5)))


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="numpy")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--symbols", type=int, default=8)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--nonlinearity", choices=("tanh", "relu"), default="tanh")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    be = backends.get_backend(args.backend, args.device)
    ceiling = ceiling_without_the_future(args.seq_len, args.symbols)
    one = train(False, be, args)
    two = train(True, be, args)
    print(f"T = {args.seq_len}, {args.symbols} symbols, D = {args.hidden}, {args.steps} steps")
    print(f"ceiling for any model that does not look ahead: {ceiling:.2%}")
    print(f"one direction (left to right): held-out accuracy {one:.2%}")
    print(f"bidirectional:                 held-out accuracy {two:.2%}")
    verdict = "reached" if two >= TARGET_ACCURACY else "did NOT reach"
    print(f"{verdict} the stated accuracy of {TARGET_ACCURACY:.0%}")
    return {"unidirectional": one, "bidirectional": two, "ceiling": ceiling}


if __name__ == "__main__":
    main()
