"""Baselines on the training split, in bits per character on the validation split.

The same text, vocabulary and 90/10 split by position as ``bptt train``, and
the same scored characters (every validation character after the first, each
predicted from the validation text before it):

- unigram: character frequencies of the training text, add-one smoothed over
  the vocabulary of the whole text;
- an interpolated modified Kneser-Ney character n-gram (Chen & Goodman 1998,
  three discounts per order estimated from count-of-counts), order 5 by default,
  interpolated down to the uniform distribution over that vocabulary.

Every character gets a nonzero probability, also one that the validation text
has and the training text lacks.

- the same n-gram, *adaptive*: its counts are updated from the held-out text as it
  is scored, each character added (as the n-gram ending at it) right after it is
  predicted, the held-out counterpart of dynamic evaluation (``bptt evaluate
  --dynamic``). The discounts stay those estimated on the training text.

``--tune-chars N`` scores only the held-out characters after the first N (the ones
``bptt evaluate --dynamic --tune-chars N`` tunes its settings on and does not score),
each still predicted from the text before it, so that both score the same characters.

Run: ``python benchmarks/baselines.py [--text FILE | --corpus stdlib] [--order 5]
[--tune-chars N]``.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from bptt.text.data import load_corpus

__all__ = ["AdaptiveKneserNey", "KneserNey", "unigram_bpc"]


def unigram_bpc(train: np.ndarray, val: np.ndarray, vocab_size: int, *, start: int = 1) -> float:
    """Add-one smoothed unigram over ``vocab_size`` symbols, scored on val[start:]."""
    counts = np.bincount(train, minlength=vocab_size) + 1.0  # (V,)
    logp = np.log2(counts / counts.sum())
    return float(-logp[val[start:]].mean())


# The discounts used for an order whose estimates are out of range (KenLM's
# ``lmplz --discount_fallback`` defaults).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


def _discounts(count_of_counts: Counter) -> tuple[float, float, float]:
    """D1, D2, D3+ from n1..n4, the numbers of n-grams seen exactly 1..4 times.

    Each Dk must lie in (0, k]: a discount <= 0 can leave a context no mass (or a
    negative one) for the symbols it has not seen, which then get probability 0 or
    less. With few n-grams, as for single characters, the estimates fall outside
    (here: topics D2 = -3.25, stdlib D3+ = -0.66, from n3 = n4 = 0); that order then
    uses :data:`FALLBACK_DISCOUNTS`.
    """
    n1, n2, n3, n4 = (max(count_of_counts.get(k, 0), 1) for k in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2)
    found = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if all(0 < d <= k for k, d in zip((1, 2, 3), found, strict=True)):
        return found
    return FALLBACK_DISCOUNTS


class KneserNey:
    """Interpolated modified Kneser-Ney over strings of symbols (here, characters).

    The highest order uses raw counts c(h w); lower orders use continuation
    counts N1+(. h w) (how many distinct symbols precede h w). For a context h
    with total count c(h .) > 0::

        P(w | h) = max(c(h w) - D(c(h w)), 0) / c(h .) + gamma(h) P(w | h')
        gamma(h) = (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) / c(h .)

    where h' drops h's oldest symbol; an unseen context backs off fully; the
    recursion ends in the uniform distribution 1 / V. As every discount is in
    (0, k] (:func:`_discounts`), gamma(h) > 0 and every P(w | h) >= the product of
    the gammas / V > 0.
    """

    def __init__(self, text: str, *, order: int, vocab_size: int) -> None:
        self.order, self.V = order, vocab_size
        highest = Counter(text[i : i + order] for i in range(len(text) - order + 1))
        counts: dict[int, Counter] = {order: highest}
        for n in range(order - 1, 0, -1):
            # N1+(. g): distinct left extensions of each n-gram g
            counts[n] = Counter(g[1:] for g in counts[n + 1])
        self.counts = counts
        self.discount = {n: _discounts(Counter(c.values())) for n, c in counts.items()}
        self.context: dict[int, dict[str, list[float]]] = {}
        for n, c in counts.items():
            d1, d2, d3 = self.discount[n]
            ctx: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # total, gamma mass
            for gram, k in c.items():
                entry = ctx[gram[:-1]]
                entry[0] += k
                entry[1] += d1 if k == 1 else d2 if k == 2 else d3
            self.context[n] = dict(ctx)

    def prob(self, history: str, symbol: str) -> float:
        """P(symbol | the last order-1 symbols of history)."""
        p = 1.0 / self.V
        for n in range(1, self.order + 1):
            h = history[len(history) - (n - 1) :] if n > 1 else ""
            if n > 1 and len(h) < n - 1:
                break
            entry = self.context[n].get(h)
            if entry is None:
                continue  # unseen context: keep the lower-order estimate
            total, mass = entry
            k = self.counts[n].get(h + symbol, 0)
            d1, d2, d3 = self.discount[n]
            d = 0.0 if k == 0 else d1 if k == 1 else d2 if k == 2 else d3
            p = max(k - d, 0.0) / total + (mass / total) * p
        return p

    def bpc(self, text: str, *, start: int = 1) -> float:
        """Bits per character on text[start:], each predicted from the text before it."""
        if not 1 <= start < len(text):
            raise ValueError(f"start: expected 1 <= start < {len(text)}; got {start}")
        bits = 0.0
        for i in range(start, len(text)):
            bits -= math.log2(self.prob(text[max(0, i - self.order + 1) : i], text[i]))
            self.after_scoring(text, i)
        return bits / (len(text) - start)

    def after_scoring(self, text: str, i: int) -> None:
        """Called once text[i] has been scored; a static model learns nothing."""


def _discount_of(discount: tuple[float, float, float], k: int) -> float:
    """D(k) of modified Kneser-Ney: 0 for an unseen n-gram, then D1, D2, D3+."""
    return 0.0 if k == 0 else discount[min(k, 3) - 1]


class AdaptiveKneserNey(KneserNey):
    """:class:`KneserNey` whose counts grow with the text it scores (a cache model).

    After text[i] is predicted, the n-gram of the model's order ending at it is
    counted as the constructor counts the training text's: its raw count at the
    highest order and, where it is new there, one more distinct left extension of
    its suffix at the order below, and so on down (the continuation counts). Each
    context's total and discount mass follow. The discounts stay those of the
    training text. With ``adapt=False`` it is exactly the static model.
    """

    def __init__(self, text: str, *, order: int, vocab_size: int, adapt: bool = True) -> None:
        super().__init__(text, order=order, vocab_size=vocab_size)
        self.adapt = adapt

    def observe(self, gram: str) -> None:
        """Count one more occurrence of ``gram`` (``order`` symbols), as training does."""
        if len(gram) != self.order:
            raise ValueError(f"gram: expected {self.order} symbols; got {gram!r}")
        for n in range(self.order, 0, -1):
            counts, discount = self.counts[n], self.discount[n]
            k = counts.get(gram, 0)
            counts[gram] = k + 1
            entry = self.context[n].setdefault(gram[:-1], [0.0, 0.0])  # total, gamma mass
            entry[0] += 1
            entry[1] += _discount_of(discount, k + 1) - _discount_of(discount, k)
            if k > 0:  # seen before: no new left extension for the order below
                return
            gram = gram[1:]

    def after_scoring(self, text: str, i: int) -> None:
        if self.adapt and i >= self.order - 1:
            self.observe(text[i - self.order + 1 : i + 1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", help="a UTF-8 text file (default: the built-in text)")
    parser.add_argument("--corpus", default="topics", choices=("topics", "stdlib"))
    parser.add_argument("--order", type=int, default=5, help="n-gram order (default 5)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument(
        "--tune-chars", type=int, default=0, metavar="N",
        help="score only the held-out characters after the first N (default 0: all), as "
        "bptt evaluate --dynamic --tune-chars N does",
    )  # fmt: skip
    args = parser.parse_args(argv)
    corpus = load_corpus(text=args.text, corpus=args.corpus, val_fraction=args.val_fraction)
    V = len(corpus.vocab)
    train_text, val_text = corpus.vocab.decode(corpus.train), corpus.vocab.decode(corpus.val)
    start = 1 + args.tune_chars
    if not 0 <= args.tune_chars < len(val_text) - 1:
        parser.error(f"--tune-chars: expected 0 <= N < {len(val_text) - 1}; got {args.tune_chars}")
    print(f"{corpus.source}: {len(train_text):,} train / {len(val_text):,} validation chars, V={V}")
    print(f"scored: {len(val_text) - start:,} held-out characters"
          + (f" (after the first {args.tune_chars:,})" if args.tune_chars else ""))  # fmt: skip
    print(f"unigram (add-one): {unigram_bpc(corpus.train, corpus.val, V, start=start):.3f} "
          "bits/char")  # fmt: skip
    name = f"modified Kneser-Ney {args.order}-gram"
    static = KneserNey(train_text, order=args.order, vocab_size=V)
    print(f"{name}: {static.bpc(val_text, start=start):.3f} bits/char")
    adaptive = AdaptiveKneserNey(train_text, order=args.order, vocab_size=V)
    print(f"{name}, adaptive (counts updated as it scores): "
          f"{adaptive.bpc(val_text, start=start):.3f} bits/char")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
