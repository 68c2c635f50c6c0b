"""examples/adding_problem.py in a reduced form: the task as Le et al. 2015 define it,
its always-1 baseline, and an IRNN learning it at a short T (seconds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "adding_problem.py"


def _load():
    spec = importlib.util.spec_from_file_location("adding_problem", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_task_is_the_papers() -> None:
    ap = _load()
    x, y = ap.adding_batch(np.random.default_rng(0), 20, 500)
    assert x.shape == (20, 500, 2) and y.shape == (20, 500, 1)
    assert ((0 <= x[..., 0]) & (x[..., 0] <= 1)).all()
    marker = x[..., 1]
    assert (marker.sum(axis=0) == 2).all()
    assert (marker[:10].sum(axis=0) == 1).all() and (marker[10:].sum(axis=0) == 1).all()
    assert np.allclose(y[-1, :, 0], (x[..., 0] * marker).sum(axis=0))
    assert not y[:-1].any()
    _, big = ap.adding_batch(np.random.default_rng(1), 4, 200_000)
    assert abs(np.mean((big[-1, :, 0] - 1.0) ** 2) - ap.BASELINE_EXACT) < 0.003


def test_irnn_learns_a_short_adding_problem(capsys) -> None:
    ap = _load()
    results = ap.main(["--T", "10", "--models", "irnn", "--hidden", "16", "--steps", "1500",
                       "--eval-every", "250", "--lr", "1e-2", "--test", "300",
                       "--remat", "3"])  # fmt: skip
    assert results["irnn"] < 0.02 < ap.BASELINE_EXACT  # seeds 0-2: 0.0008-0.0015
    assert "irnn: best test MSE" in capsys.readouterr().out
