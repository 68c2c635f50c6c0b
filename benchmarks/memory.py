"""Memory held by chunked training does not grow with the length of the text.

For each text length (a prefix of the built-in ``stdlib`` corpus, 4.7 MB, kept
to ASCII so that the vocabulary, and with it the model, is about the same size
at every length: M is printed), a fresh process builds a NumPy trainer and
trains ``--steps`` steps (and the validation pass every run ends with). Three
figures per length:

- data: what the trainer holds before the first step (tracemalloc, which NumPy
  reports its buffers to): the training ids, int64, 8 bytes per character, and
  the validation layout, about 24 bytes per held-out character. This is O(N) by
  design: the text is moved to the device once;
- training peak: the tracemalloc peak during ``run`` above that: the working set
  of one chunk (T x B x D states and gradients) and of one validation block,
  which must not depend on N;
- peak RSS of the process (``ru_maxrss``): interpreter, libraries, data and the
  working set together.

Run: ``python benchmarks/memory.py [--sizes 1e5,1e6,4e6] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

MB = 1024 * 1024


def measure(n_chars: int, steps: int, hidden: int, batch: int, seq_len: int) -> dict:
    """Train on the first ``n_chars`` of the stdlib text in this process; figures in bytes."""
    from bptt import data, train

    text = data.builtin_text("stdlib").encode("ascii", "ignore").decode("ascii")[:n_chars]
    if len(text) < n_chars:
        raise SystemExit(f"--sizes: the stdlib text has only {len(text):,} characters")
    tracemalloc.start()
    corpus = data.Corpus.from_text(text, source=f"stdlib[:{n_chars}]")
    del text
    config = train.TrainConfig(
        hidden=hidden, batch=batch, seq_len=seq_len, log_every=steps, eval_every=10 * steps
    )
    trainer = train.Trainer.create(corpus, config, backend="numpy")
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    trainer.run(steps=steps)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024
    )
    M = len(corpus.vocab)
    return {
        "chars": n_chars,
        "M": M,
        "held": held,
        "train_peak": peak - held,
        "rss": rss,
        "s": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6,4e6", help="text lengths in characters")
    parser.add_argument("--steps", type=int, default=20, help="training steps per length")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: one length, JSON out
    args = parser.parse_args(argv)
    shape = (args.steps, args.hidden, args.batch, args.seq_len)
    if args.one is not None:
        print(json.dumps(measure(args.one, *shape)))
        return 0
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    print(f"NumPy, D={args.hidden} B={args.batch} T={args.seq_len}, float32, {args.steps} steps")
    head = ("chars", 10), ("M", 4), ("data held", 10), ("training peak", 14), ("peak RSS", 9)
    print(" ".join(f"{name:>{width}}" for name, width in head) + f" {'time':>6}")
    for n in sizes:
        child = [sys.executable, __file__, "--one", str(n), "--steps", str(args.steps),
                 "--hidden", str(args.hidden), "--batch", str(args.batch),
                 "--seq-len", str(args.seq_len)]  # fmt: skip
        out = subprocess.run(child, capture_output=True, text=True, env=os.environ)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{r['chars']:>10,} {r['M']:>4} {r['held'] / MB:>8.1f}MB "
            f"{r['train_peak'] / MB:>12.2f}MB {r['rss'] / MB:>7.0f}MB {r['s']:>5.1f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
