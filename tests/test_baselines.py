"""benchmarks/baselines.py: every character gets a nonzero probability, also one that the
validation text has and the training text lacks (the stdlib corpus once crashed with a
``math domain error`` there)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bptt.data import Corpus

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
