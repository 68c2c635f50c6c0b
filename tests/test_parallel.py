"""The NumPy thread split (bptt._parallel) changes nothing but the speed."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_problem

import bptt
from bptt import _parallel, backends

NUMPY = backends.get_backend("numpy")


@pytest.fixture
def split(monkeypatch: pytest.MonkeyPatch):
    """Split every elementwise pass, however small, into up to n blocks."""
    monkeypatch.setattr(_parallel, "MIN_WORK", 1)
    monkeypatch.setattr(_parallel, "HEAD_MIN_WORK", 1)
    yield _parallel.set_max_threads
    _parallel.set_max_threads(None)


@pytest.mark.parametrize("cfg", [dict(), dict(ids=False, h0=True, mask=True)])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_threads_give_identical_results(split, cfg: dict, dtype: str) -> None:
    prob = make_problem(NUMPY, np.random.default_rng(3), T=6, B=7, D=5, dtype=dtype, **cfg)
    keep = (np.random.default_rng(4).random((6, 7, 5)) < 0.7).astype(dtype) / 0.7
    results = []
    for n in (1, 3):
        split(n)
        assert len(_parallel.row_blocks(np, 7, 35)) == n
        results.append(
            bptt.loss_and_grad(
                prob.params, prob.inputs, prob.targets, dropout_mask=keep, **prob.kwargs
            )
        )
    (l1, g1, h1), (l3, g3, h3) = results
    np.testing.assert_array_equal(l3, l1)
    np.testing.assert_array_equal(h3, h1)
    for key in g1:
        np.testing.assert_array_equal(g3[key], g1[key])


def test_blocks_cover_the_rows(split) -> None:
    split(4)
    blocks = _parallel.row_blocks(np, 10, 30)
    assert [(b.start, b.stop) for b in blocks] == [(0, 2), (2, 5), (5, 7), (7, 10)]


def test_only_numpy_is_split(split) -> None:
    split(2)
    strict = backends.get_backend("array_api_strict")
    assert _parallel.row_blocks(strict.xp, 64, 64 * 256) == [slice(0, 64)]
    assert len(_parallel.row_blocks(NUMPY.xp, 64, 64 * 256)) == 2


def test_default_size_rules() -> None:
    _parallel.set_max_threads(2)
    try:
        assert len(_parallel.row_blocks(np, 32, 32 * 100)) == 1  # S1: too small
        assert len(_parallel.row_blocks(np, 64, 64 * 256)) == 1  # S2 float32 tanh
        assert len(_parallel.row_blocks(np, 64, 64 * 256, itemsize=8)) == 2  # S2 float64 tanh
        assert len(_parallel.row_blocks(np, 128, 128 * 512)) == 2  # S3 tanh
        head = {"min_work": _parallel.HEAD_MIN_WORK, "float64_cost": _parallel.HEAD_FLOAT64_COST}
        assert len(_parallel.row_blocks(np, 25, 25 * 32 * 65, **head)) == 1  # S1 float32
        assert len(_parallel.row_blocks(np, 25, 25 * 32 * 65, 8, **head)) == 1  # S1 float64
        assert len(_parallel.row_blocks(np, 100, 100 * 32 * 65, 8, **head)) == 2  # 208k float64
        assert len(_parallel.row_blocks(np, 50, 50 * 64 * 65, **head)) == 1  # 208k float32
        assert len(_parallel.row_blocks(np, 100, 100 * 64 * 128, **head)) == 2  # S2 float32
    finally:
        _parallel.set_max_threads(None)
