"""Sampling: seeded, the same on every backend, prime and temperature handled."""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import small_corpus

import bptt
from bptt import backends
from bptt.text.data import DataError
from bptt.text.sample import sample, sample_ids

VOCAB = small_corpus().vocab
MODEL = bptt.RNN(len(VOCAB), 16, len(VOCAB))


def _params(be, seed: int = 0) -> dict:
    dtype = "float64" if be.supports("float64") else "float32"
    params = MODEL.init(dtype=dtype, seed=seed, backend=be.name, device=be.device)
    params["V"] = params["V"] * 4  # a peakier distribution than at init
    return params


def test_same_text_on_every_backend(be) -> None:
    text = sample(MODEL, _params(be), VOCAB, length=60, temperature=0.8, prime="if ", seed=5)
    ref = sample(
        MODEL,
        _params(backends.get_backend("numpy")),
        VOCAB,
        length=60,
        temperature=0.8,
        prime="if ",
        seed=5,
    )
    assert len(text) == 60 and set(text) <= set(VOCAB.chars)
    assert text == ref


def test_seed_fixes_the_sample() -> None:
    params = _params(backends.get_backend("numpy"))
    a = sample(MODEL, params, VOCAB, length=80, seed=1)
    assert a == sample(MODEL, params, VOCAB, length=80, seed=1)
    assert a != sample(MODEL, params, VOCAB, length=80, seed=2)


def test_low_temperature_is_greedy() -> None:
    """As T -> 0 the draw becomes the argmax of the logits, whatever the uniforms."""
    be = backends.get_backend("numpy")
    params = _params(be)
    prime = be.asarray(VOCAB.encode("for "))
    ids = sample_ids(MODEL, params, prime, length=30, temperature=1e-6, seed=0)
    h, x, greedy = None, VOCAB.encode("for ")[:, None], []
    for _ in range(30):
        states, logits = bptt.forward(params, x, h0=h)
        h, nxt = states[-1], int(np.argmax(logits[-1, 0]))
        greedy.append(nxt)
        x = np.asarray([[nxt]])
    np.testing.assert_array_equal(ids, greedy)
    assert sample_ids(MODEL, params, prime, length=30, temperature=1e-6, seed=9).tolist() == greedy


def test_distribution_follows_softmax() -> None:
    """Many one-step draws from one state match softmax(g / temperature)."""
    be = backends.get_backend("numpy")
    params = _params(be)
    prime = VOCAB.encode("wh")
    _, logits = bptt.forward(params, prime[:, None])
    z = logits[-1, 0] / 2.0
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    draws = [
        sample_ids(MODEL, params, be.asarray(prime), length=1, temperature=2.0, seed=s)[0]
        for s in range(1500)
    ]
    freq = np.bincount(draws, minlength=len(p)) / len(draws)
    assert np.abs(freq - p).max() < 0.04


def test_errors() -> None:
    params = _params(backends.get_backend("numpy"))
    with pytest.raises(ValueError, match="temperature: expected a positive number"):
        sample(MODEL, params, VOCAB, temperature=0)
    with pytest.raises(ValueError, match="length: expected an integer >= 0"):
        sample(MODEL, params, VOCAB, length=-1)
    with pytest.raises(DataError, match=r"prime: character\(s\) '€'"):
        sample(MODEL, params, VOCAB, prime="€")
    with pytest.raises(ValueError, match="vocab: 3 characters"):
        sample(MODEL, params, "abc")
    assert sample(MODEL, params, VOCAB, length=0) == ""
