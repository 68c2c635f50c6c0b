"""benchmarks/baselines.py: every character gets a nonzero probability, also one that the
validation text has and the training text lacks (the stdlib corpus once crashed with a
``math domain error`` there)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bptt.text.data import Corpus

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "baselines.py"

# 90/10 split by position: the validation tail "...a dog!?" has d, g, ! and ? that the
# training text lacks, and the single characters' count-of-counts give a negative
# estimate of D2 and D3+ (the old model's probability of "!" was below zero).
TEXT = "the cat sat on the mat. " * 20 + "a dog!?"


@pytest.fixture(scope="module")
def baselines():
    spec = importlib.util.spec_from_file_location("baselines", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    corpus = Corpus.from_text(TEXT, source="test")
    train, val = (corpus.vocab.decode(ids) for ids in (corpus.train, corpus.val))
    assert set(val) - set(train), "the validation part must have a character unseen in training"
    return corpus


def test_every_character_has_a_positive_probability(baselines, corpus: Corpus) -> None:
    train, val = (corpus.vocab.decode(ids) for ids in (corpus.train, corpus.val))
    order = 5
    model = baselines.KneserNey(train, order=order, vocab_size=len(corpus.vocab))
    for i in range(1, len(val)):
        history = val[max(0, i - order + 1) : i]
        probs = [model.prob(history, w) for w in corpus.vocab.chars]
        assert min(probs) > 0, (history, min(probs))
        assert math.isclose(sum(probs), 1.0, rel_tol=1e-9), (history, sum(probs))
    bpc = model.bpc(val)
    assert math.isfinite(bpc) and bpc > 0
    for n, found in model.discount.items():
        assert all(0 < d <= k for k, d in zip((1, 2, 3), found, strict=True)), (n, found)


def test_unigram_gives_unseen_characters_a_probability(baselines, corpus: Corpus) -> None:
    bpc = baselines.unigram_bpc(corpus.train, corpus.val, len(corpus.vocab))
    assert math.isfinite(bpc) and 0 < bpc < math.log2(len(corpus.vocab)) + 1


def test_script_on_such_a_text(tmp_path: Path) -> None:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--text", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "unigram (add-one)" in out.stdout and "Kneser-Ney 5-gram" in out.stdout


def test_the_adaptive_model_without_updates_is_the_static_one(baselines, corpus) -> None:
    train, val = (corpus.vocab.decode(ids) for ids in (corpus.train, corpus.val))
    V = len(corpus.vocab)
    static = baselines.KneserNey(train, order=5, vocab_size=V)
    frozen = baselines.AdaptiveKneserNey(train, order=5, vocab_size=V, adapt=False)
    for start in (1, 3):
        assert frozen.bpc(val, start=start) == static.bpc(val, start=start)
    assert frozen.counts == static.counts and frozen.context == static.context
    adaptive = baselines.AdaptiveKneserNey(train, order=5, vocab_size=V)
    novel = "a toast to the moths at sea. " * 4  # new words, repeated: a cache model learns them
    assert adaptive.bpc(novel) < static.bpc(novel) - 0.5


def test_adaptive_counts_by_hand(baselines) -> None:
    """Training text "abcab", order 3; then "abb" is scored. Only its last character ends a
    3-gram: "abb", new at order 3, so "bb" gets its first left extension at order 2, which
    is new too, so "b" gets its second at order 1 (it already had "ab")."""
    model = baselines.AdaptiveKneserNey("abcab", order=3, vocab_size=4)
    assert model.counts[3] == {"abc": 1, "bca": 1, "cab": 1}
    assert model.counts[2] == {"bc": 1, "ca": 1, "ab": 1}
    assert model.counts[1] == {"c": 1, "a": 1, "b": 1}
    d = model.discount  # per order: D1, D2, D3+
    p1, p2 = model.prob("a", "b"), model.prob("ab", "b")  # before any update
    assert model.bpc("abb") == pytest.approx(-(math.log2(p1) + math.log2(p2)) / 2, rel=1e-12)
    assert model.prob("ab", "b") > p2  # each character is added after it is predicted
    assert model.counts[3] == {"abc": 1, "bca": 1, "cab": 1, "abb": 1}
    assert model.counts[2] == {"bc": 1, "ca": 1, "ab": 1, "bb": 1}
    assert model.counts[1] == {"c": 1, "a": 1, "b": 2}
    assert model.context[3]["ab"] == pytest.approx([2, 2 * d[3][0]])
    assert model.context[2]["b"] == pytest.approx([2, 2 * d[2][0]])
    assert model.context[1][""] == pytest.approx([4, 2 * d[1][0] + d[1][1]])
    model.bpc("abb")  # once more: "abb" is seen now, nothing new below it
    assert model.counts[3]["abb"] == 2 and model.counts[2]["bb"] == 1
    assert model.context[3]["ab"] == pytest.approx([3, d[3][0] + d[3][1]])


def test_adaptive_counts_equal_counting_everything_at_once(baselines, corpus) -> None:
    """After scoring the validation text, the counts are those of the training text's
    n-grams and the validation text's, counted as the constructor counts."""
    train, val = (corpus.vocab.decode(ids) for ids in (corpus.train, corpus.val))
    order = 4
    model = baselines.AdaptiveKneserNey(train, order=order, vocab_size=len(corpus.vocab))
    model.bpc(val)
    grams = Counter(t[i : i + order] for t in (train, val) for i in range(len(t) - order + 1))
    expected = {order: grams}
    for n in range(order - 1, 0, -1):
        expected[n] = Counter(g[1:] for g in expected[n + 1])
    for n in range(1, order + 1):
        assert dict(model.counts[n]) == dict(expected[n]), n
        d1, d2, d3 = model.discount[n]
        context: dict[str, list[float]] = {}
        for gram, k in expected[n].items():
            entry = context.setdefault(gram[:-1], [0.0, 0.0])
            entry[0] += k
            entry[1] += d1 if k == 1 else d2 if k == 2 else d3
        assert model.context[n].keys() == context.keys()
        for h, (total, mass) in context.items():
            assert model.context[n][h] == pytest.approx([total, mass], rel=1e-12), (n, h)
