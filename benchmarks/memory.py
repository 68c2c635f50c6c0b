"""Memory held by chunked training does not grow with the length of the text.

For each text length, a fresh process loads the text from a UTF-8 file (as
``bptt train --text FILE`` does: :func:`bptt.text.data.load_corpus` reads it in blocks,
twice) and trains ``--steps`` steps of a NumPy trainer (and the validation pass
every run ends with). The files are prefixes of the built-in ``stdlib`` corpus,
kept to ASCII and repeated as often as the length needs, so that the vocabulary,
and with it the model, is the same size at every length (M is printed). Three
figures per length:

- data: what the trainer holds before the first step (tracemalloc, which NumPy
  reports its buffers to): the ids, 1 byte per character for up to 256 symbols
  (a view for the training part, one for the validation part, both on the
  device once), and the validation layout (inputs and targets 1 byte, weights 4
  bytes, per held-out character);
- training peak: the tracemalloc peak during ``run`` above that: the working set
  of one chunk (T x B x D states and gradients) and of one validation block,
  which must not depend on N;
- peak RSS of the process (``ru_maxrss``): interpreter, libraries, reading the
  file, data and the working set together. Its growth per character is printed.

Run: ``python benchmarks/memory.py [--sizes 1e6,1e7,5e7] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

MB = 1024 * 1024


def write_text(path: str, n_chars: int) -> None:
    """The first ``n_chars`` of the ASCII stdlib text, repeated as needed, to ``path``."""
    from bptt.text import data

    base = data.builtin_text("stdlib").encode("ascii", "ignore")
    with open(path, "wb") as f:
        left = n_chars
        while left > 0:
            f.write(base[:left])
            left -= min(left, len(base))


def measure(path: str, steps: int, hidden: int, batch: int, seq_len: int) -> dict:
    """Load ``path`` as ``bptt train --text`` does and train in this process; bytes."""
    from bptt import train
    from bptt.text import data

    tracemalloc.start()
    corpus = data.load_corpus(text=path)
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
    return {
        "chars": len(corpus.train) + len(corpus.val),
        "M": len(corpus.vocab),
        "held": held,
        "train_peak": peak - held,
        "rss": rss,
        "s": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,1e7,5e7", help="text lengths in characters")
    parser.add_argument("--steps", type=int, default=20, help="training steps per length")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child: one text file, JSON out
    args = parser.parse_args(argv)
    shape = (args.steps, args.hidden, args.batch, args.seq_len)
    if args.one is not None:
        print(json.dumps(measure(args.one, *shape)))
        return 0
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    print(f"NumPy, D={args.hidden} B={args.batch} T={args.seq_len}, float32, {args.steps} steps")
    head = ("chars", 11), ("M", 4), ("data held", 10), ("training peak", 14), ("peak RSS", 9)
    print(" ".join(f"{name:>{width}}" for name, width in head) + f" {'time':>6}")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = os.path.join(tmp, f"text{n}.txt")
            write_text(path, n)
            child = [sys.executable, __file__, "--one", path, "--steps", str(args.steps),
                     "--hidden", str(args.hidden), "--batch", str(args.batch),
                     "--seq-len", str(args.seq_len)]  # fmt: skip
            out = subprocess.run(child, capture_output=True, text=True, env=os.environ)
            os.unlink(path)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            r = json.loads(out.stdout.strip().splitlines()[-1])
            first = first or r
            slope = (r["rss"] - first["rss"]) / max(r["chars"] - first["chars"], 1)
            print(
                f"{r['chars']:>11,} {r['M']:>4} {r['held'] / MB:>8.1f}MB "
                f"{r['train_peak'] / MB:>12.2f}MB {r['rss'] / MB:>7.0f}MB {r['s']:>5.1f}s"
                + (f"  (RSS +{slope:.2f} bytes/char)" if r is not first else "")
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
