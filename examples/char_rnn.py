"""Train a character-level tanh RNN with truncated BPTT, on any backend.

The same loop as ``bptt train``, written out top to bottom. On a GPU::

    python examples/char_rnn.py --backend cupy --steps 3000

On a laptop (NumPy, about half a minute with the defaults)::

    python examples/char_rnn.py
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import bptt
from bptt import backends, optim
from bptt.numerics.random import dropout_mask
from bptt.text.data import Streams, load_corpus
from bptt.text.sample import sample
from bptt.text.validation import evaluate, layout_validation


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--text", default=None, help="a UTF-8 file (default: Python's manual)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--eval-every", type=int, default=75)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    D, B, T = args.hidden, args.batch, args.seq_len

    # 1. Data: ids over the sorted vocabulary, 90/10 split by position, B streams.
    be = backends.get_backend(args.backend, args.device)
    with be.activate():  # CuPy works on the current GPU: make it the one asked for
        xp = be.xp
        corpus = load_corpus(text=args.text)
        corpus.check_fits(batch=B, seq_len=T)
        M = len(corpus.vocab)
        streams = Streams(len(corpus.train), B, T)
        ids = be.asarray(corpus.train, dtype=be.integer)  # (N,) moved to the device once
        val = layout_validation(corpus.val, streams=16, warmup=100, backend=be, dtype="float32")
        print(
            f"{corpus.source}: {len(corpus.train):,} chars, {M} symbols; {be.name} on {be.device}"
        )

        # 2. Model and optimizer; their state lives on the device.
        model = bptt.RNN(M, D, M)  # one tanh layer, softmax head
        params = model.init(seed=args.seed, backend=be.name, device=be.device)
        opt = optim.chain(optim.clip_by_global_norm(5.0), optim.adam(args.lr))
        state = opt.init(params)
        rng = np.random.default_rng([args.seed, 1])  # epoch offsets

        # 3. The loop: each step takes the next T characters of every stream and starts
        #    from the state the previous chunk ended with; reset at each new epoch.
        chunk, epoch_ids, h = streams.chunks, None, None
        loss_sum = xp.zeros((), dtype=xp.float32, device=be.device)
        step_count = xp.zeros((), dtype=be.integer, device=be.device)
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            if chunk == streams.chunks:  # a new epoch: new offset, zero state
                offset = int(rng.integers(0, T))
                start, stop = streams.epoch_slice(offset)
                E = xp.reshape(ids[start:stop], (B, streams.stream_length))  # (B, L)
                epoch_ids = xp.permute_dims(E[:, : chunk * T + 1], (1, 0))  # (chunks*T + 1, B)
                chunk, h = 0, xp.zeros((B, D), dtype=xp.float32, device=be.device)
            x = epoch_ids[chunk * T : (chunk + 1) * T, ...]  # (T, B)
            y = epoch_ids[chunk * T + 1 : (chunk + 1) * T + 1, ...]  # (T, B), shifted by one
            mask = None
            if args.dropout > 0:
                mask = dropout_mask(
                    args.seed,
                    step_count,
                    (T, B, D),
                    args.dropout,
                    xp=xp,
                    device=be.device,
                    dtype=xp.float32,
                )  # on the device
            loss, grads, h = model.loss_and_grad(
                params, x, y, h0=h, dropout_mask=mask, check_values=step == 1
            )
            updates, state = opt.update(grads, state, params)  # clip, then Adam
            params = optim.apply_updates(params, updates)
            loss_sum = loss_sum + loss  # stays on the device: no sync per step
            step_count = step_count + 1  # the dropout stream's counter, on the device
            chunk += 1
            if step % args.eval_every == 0 or step == args.steps:
                n = args.eval_every if step % args.eval_every == 0 else step % args.eval_every
                train_bpc = float(be.to_numpy(loss_sum)) / n / math.log(2)  # one read per interval
                loss_sum = xp.zeros((), dtype=xp.float32, device=be.device)
                if not math.isfinite(train_bpc):
                    raise SystemExit(f"the loss became non-finite by step {step}")
                val_bpc = evaluate(model, params, val)
                rate = step * B * T / (time.perf_counter() - t0)
                print(
                    f"step {step}: train {train_bpc:.3f}, validation {val_bpc:.3f} bits/char, "
                    f"{rate:,.0f} chars/s overall"
                )
                print(
                    "  | "
                    + sample(
                        model, params, corpus.vocab, length=120, prime="The ", seed=step
                    ).replace("\n", "\n  | ")
                )
        return val_bpc


if __name__ == "__main__":
    main()
