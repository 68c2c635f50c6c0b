"""Never report success on garbage: every check that could pass on what it did not see fails.

Tables: gradcheck on NaN and on nothing; optimizer arguments and gradients of the wrong
shape (never broadcast); dropout multipliers; NumPy masked arrays; sampling at every
temperature the command line accepts (greedy in the limit, uniform at the other end).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import bptt
from bptt import backends, optim
from bptt.numerics import finite_diff
from bptt.numerics import random as brandom
from bptt.text.sample import sample_ids

M, D, C, T, B = 5, 4, 3, 6, 2


def _problem():
    rng = np.random.default_rng(0)
    params = bptt.init_params(M, D, C, dtype="float64", seed=1)
    params["b"] = rng.uniform(-0.5, 0.5, D)
    return params, rng.integers(0, M, (T, B)), rng.integers(0, C, (T, B))


def _nan_grads(monkeypatch):
    real = finite_diff.step.loss_and_grad

    def fake(*args, **kwargs):
        loss, grads, h = real(*args, **kwargs)
        return loss, {**grads, "W": grads["W"] * np.nan}, h

    monkeypatch.setattr(finite_diff.step, "loss_and_grad", fake)


def _nan_numeric(monkeypatch):
    real = finite_diff.step.loss
    calls = []

    def fake(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs) * (np.nan if len(calls) == 7 else 1.0)

    monkeypatch.setattr(finite_diff.step, "loss", fake)


def _nan_loss(monkeypatch):
    real = finite_diff.step.loss_and_grad
    monkeypatch.setattr(finite_diff.step, "loss_and_grad",
                        lambda *a, **k: (np.float64(np.nan), *real(*a, **k)[1:]))  # fmt: skip


# (what is wrong, how to make it so, keyword arguments, the error, its message)
GRADCHECK = [
    ("NaN eps", None, {"eps": math.nan}, ValueError, "eps: expected a positive finite step"),
    ("infinite eps", None, {"eps": math.inf}, ValueError, "eps: expected"),
    ("eps True", None, {"eps": True}, ValueError, "eps: expected"),
    ("no entry", None, {"max_entries": 0}, ValueError, "max_entries: expected a positive"),
    ("half an entry", None, {"max_entries": 2.5}, ValueError, "max_entries"),
    ("NaN max_entries", None, {"max_entries": math.nan}, ValueError, "max_entries"),
    ("negative seed", None, {"seed": -1}, ValueError, "seed: expected an integer >= 0"),
    ("NaN loss", _nan_loss, {}, FloatingPointError, "the loss is nan; nothing to check"),
    ("NaN gradient", _nan_grads, {}, FloatingPointError, "params['W']: the BPTT gradient is NaN"),
    ("NaN difference", _nan_numeric, {}, FloatingPointError, "the finite differences are NaN"),
    ("NaN parameter", "W", {}, ValueError, "params['W']: contains NaN"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "kwargs", "error", "message"), [g[1:] for g in GRADCHECK],
                         ids=[g[0] for g in GRADCHECK])  # fmt: skip
def test_gradcheck_never_passes_on_nan_or_nothing(monkeypatch, make, kwargs, error, message):
    params, x, y = _problem()
    if isinstance(make, str):
        params[make] = np.full_like(params[make], np.nan)
    elif make is not None:
        make(monkeypatch)
    with pytest.raises(error) as info:
        bptt.gradcheck(params, x, y, **kwargs)
    assert message in str(info.value), info.value


def test_gradcheck_still_passes_on_good_gradients() -> None:
    params, x, y = _problem()
    assert bptt.gradcheck(params, x, y) < 1e-9
    assert bptt.gradcheck(params, x, y, max_entries=1) < 1e-9


# ---- optimizers ------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (lambda: optim.sgd(-0.1), "lr: expected a positive"),
    (lambda: optim.adam(math.nan), "lr"),
    (lambda: optim.rmsprop(math.inf), "lr"),
    (lambda: optim.scale_by_learning_rate(-1e-3), "lr"),
    (lambda: optim.exponential_decay(-1.0, rate=0.5, every=10), "lr"),
    (lambda: optim.clip_by_global_norm(-5.0), "max_norm: expected a positive"),
    (lambda: optim.clip_by_global_norm(math.nan), "max_norm"),
    (lambda: optim.adam(0.1, weight_decay=-0.1), "weight_decay: expected a number >= 0"),
    (lambda: optim.add_decayed_weights(-1.0), "weight decay: expected a number >= 0"),
    (lambda: optim.rmsprop(0.1, decay=-0.1), "decay: expected a number in [0, 1)"),
    (lambda: optim.rmsprop(0.1, decay=1.0), "decay"),
    (lambda: optim.exponential_decay(0.1, rate=-0.5, every=1), "rate: expected a factor"),
    (lambda: optim.sgd(0.1, momentum=5), "momentum: expected a number in [0, 1)"),
    (lambda: optim.trace(math.nan), "momentum"),
    (lambda: optim.adagrad(0.1, eps=-1e-8), "eps: expected a positive"),
    (lambda: optim.adam(0.1, b1=-0.1), "b1"),
    (lambda: optim.adam(0.1, b2=1.5), "b2"),
    (lambda: optim.adam("0.1"), "lr"),
]


@pytest.mark.parametrize(("make", "message"), BAD_ARGUMENTS, ids=[m for _, m in BAD_ARGUMENTS])
def test_optimizer_arguments_are_validated(make, message: str) -> None:
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value), info.value


TRANSFORMS = {
    "sgd": lambda: optim.sgd(0.1),
    "sgd momentum": lambda: optim.sgd(0.1, momentum=0.9),
    "adagrad": lambda: optim.adagrad(0.1),
    "rmsprop": lambda: optim.rmsprop(0.1),
    "adam + weight decay": lambda: optim.adam(0.1, weight_decay=0.1),
    "trace": lambda: optim.trace(0.9),
    "scale_by_adam": lambda: optim.scale_by_adam(0.9, 0.999, 1e-8),
    "scale_by_rms": lambda: optim.scale_by_rms(0.9, 1e-8),
    "scale_by_sum_of_squares": lambda: optim.scale_by_sum_of_squares(1e-8),
    "add_decayed_weights": lambda: optim.add_decayed_weights(0.1),
    "an unchecked chain": lambda: optim.chain(optim.clip_by_global_norm(1.0),
                                              optim.scale_by_adam(0.9, 0.999, 1e-8),
                                              optim.scale_by_learning_rate(0.1)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("flat", [False, True], ids=["dict", "flat"])
def test_a_gradient_of_the_wrong_shape_is_refused_not_broadcast(name: str, flat: bool) -> None:
    params = np.zeros(6) if flat else {"W": np.zeros((2, 3)), "b": np.zeros(3)}
    wrong = np.ones(1) if flat else {"W": np.ones((1, 3)), "b": np.ones(3)}  # broadcastable
    t = TRANSFORMS[name]()
    with pytest.raises(ValueError, match=r"shape \(1,?( 3)?\) differs"):
        t.update(wrong, t.init(params), params)
    with pytest.raises(ValueError, match="differs"):
        optim.apply_updates(params, wrong)  # p + u would broadcast too


# ---- dropout masks and masked arrays -----------------------------------------------------

MASKS = {
    "NaN": (np.nan, "got NaN"),
    "negative": (-5.0, "got values from -5.0 to -5.0"),
    "1e308": (1e308, "got values from 1e+308 to 1e+308"),
    "below 1": (0.5, "in [1, 2^53]"),
    "two scales": ("mixed", "one common 1 / (1 - p)"),
    "infinite": (np.inf, "got values from inf to inf"),
}


@pytest.mark.parametrize("case", list(MASKS))
def test_dropout_multipliers_are_checked(case: str) -> None:
    params, x, y = _problem()
    value, message = MASKS[case]
    if value == "mixed":
        mask = np.where(np.arange(T * B * D).reshape(T, B, D) % 2, 2.0, 4.0)
    else:
        mask = np.full((T, B, D), value)
    for call in (bptt.loss_and_grad, bptt.gradcheck):
        with pytest.raises(ValueError, match="dropout_mask: expected multipliers") as info:
            call(params, x, y, dropout_mask=mask)
        assert message in str(info.value), info.value


@pytest.mark.parametrize("case", ["NaN", "negative", "two scales"])
def test_a_stacks_masks_between_layers_are_checked_too(case: str) -> None:
    """layer_masks (dropout between layers) as dropout_mask, in loss_and_grad, gradcheck
    and vjp: the same one-read check, naming the mask at fault."""
    params = bptt.init_params(M, D, M, num_layers=3, dtype="float64", seed=1)
    _, x, y = _problem()
    good = brandom.dropout_mask(0, 3, (T, B, D), 0.5, xp=np, device="cpu", dtype=np.float64)
    value, message = MASKS[case]
    bad = (np.where(np.arange(T * B * D).reshape(T, B, D) % 2, 2.0, 4.0) if value == "mixed"
           else np.full((T, B, D), value))  # fmt: skip
    masks = [good, bad]
    calls = {
        "loss_and_grad": lambda: bptt.loss_and_grad(params, x, y, layer_masks=masks),
        "gradcheck": lambda: bptt.gradcheck(params, x, y, layer_masks=masks, max_entries=1),
        "vjp": lambda: bptt.vjp(params, x, layer_masks=masks),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"layer_masks\[1\]: expected multipliers") as info:
            call()
        assert message in str(info.value), (name, info.value)
    bptt.loss_and_grad(params, x, y, layer_masks=[good, good])  # right masks pass


def test_dropout_masks_that_are_right_pass() -> None:
    params, x, y = _problem()
    for p in (0.0, 0.3, 0.9):
        mask = brandom.dropout_mask(0, 3, (T, B, D), p, xp=np, device="cpu", dtype=np.float64)
        loss, _, _ = bptt.loss_and_grad(params, x, y, dropout_mask=mask)
        assert np.isfinite(loss)
    bptt.loss_and_grad(params, x, y, dropout_mask=np.zeros((T, B, D)))  # all dropped


@pytest.mark.parametrize("which", ["inputs", "targets", "h0", "params['W']", "mask"])
def test_numpy_masked_arrays_are_refused(which: str) -> None:
    params, x, y = _problem()
    kwargs = {"h0": np.zeros((B, D))}
    if which == "inputs":
        x = np.ma.masked_array(x, mask=x > 2)
    elif which == "targets":
        y = np.ma.masked_array(y, mask=y > 1)
    elif which == "h0":
        kwargs["h0"] = np.ma.masked_array(np.zeros((B, D)))
    elif which == "mask":
        kwargs["mask"] = np.ma.masked_array(np.ones((T, B), bool))
    else:
        params["W"] = np.ma.masked_array(params["W"])
    for call in (bptt.loss_and_grad, bptt.gradcheck):
        with pytest.raises(TypeError, match=re.escape(which) + ": a NumPy masked array"):
            call(params, x, y, **kwargs)
    with pytest.raises(TypeError, match="masked array"):
        bptt.forward(params, x if which == "inputs" else np.ma.masked_array(x))


# ---- sampling at every temperature the parser accepts ------------------------------------

TEMPERATURES = [5e-324, 1e-300, 1e-40, 1e-6, 0.5, 1.0, 1e30, 1e300, 1.7976931348623157e308]
JAX_TEMPERATURES = [1e-300, 1e-40]  # 1e-40: subnormal in float32, flushed to 0 by XLA


def _greedy(params, prime, length, be) -> list[int]:
    h, x, out = None, be.asarray(prime[:, None]), []
    for _ in range(length):
        states, logits = bptt.forward(params, x, h0=h)
        h, nxt = states[-1, ...], int(np.argmax(be.to_numpy(logits[-1, 0, ...])))
        out.append(nxt)
        x = be.asarray(np.asarray([[nxt]]))
    return out


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict:device1", "torch", "jax"])
def test_every_temperature_works(backend: str) -> None:
    """Tiny temperatures give the greedy choice (not id 0, not a warning), huge ones the
    uniform draw; on every backend, float32 (the dtype where 1e-300 is 0)."""
    name, _, device = backend.partition(":")
    be = backends.get_backend(name, device or None)
    model = bptt.RNN(M, 16, M)
    params = model.init(seed=4, dtype="float32", backend=be.name, device=be.device)
    prime, n = np.asarray([1, 2, 3]), 4 if name == "jax" else 12  # JAX: slow eager steps
    greedy = _greedy(params, prime, n, be)
    uniform = sample_ids(model, params, be.asarray(prime), length=n, temperature=1e300, seed=0)
    uniform = uniform.tolist()
    for temperature in TEMPERATURES if name != "jax" else JAX_TEMPERATURES:  # JAX: slow eager
        ids = sample_ids(model, params, be.asarray(prime), length=n, temperature=temperature,
                         seed=0)  # fmt: skip
        assert ((ids >= 0) & (ids < M)).all()
        if temperature <= 1e-6:
            assert ids.tolist() == greedy, temperature
        if temperature >= 1e30:
            assert ids.tolist() == uniform, temperature
    assert greedy != [0] * n and uniform != greedy


def test_uniform_at_huge_temperatures_is_uniform() -> None:
    be = backends.get_backend("numpy")
    model = bptt.RNN(M, 16, M)
    params = model.init(seed=4, dtype="float32")
    draws = [int(sample_ids(model, params, be.asarray(np.asarray([1])), length=1,
                            temperature=1e300, seed=s)[0]) for s in range(800)]  # fmt: skip
    freq = np.bincount(draws, minlength=M) / len(draws)
    assert np.abs(freq - 1 / M).max() < 0.06  # 4 standard deviations


def test_long_samples_are_joined_in_blocks_with_the_same_ids(monkeypatch) -> None:
    """Ids are joined every BLOCK characters (no array object per character kept)."""
    from bptt.text import sample as sample_module

    be = backends.get_backend("numpy")
    model = bptt.RNN(M, 8, M)
    params = model.init(seed=4, dtype="float32")
    prime = be.asarray(np.asarray([1]))
    monkeypatch.setattr(sample_module, "BLOCK", 7)
    blocked = sample_ids(model, params, prime, length=30, seed=3)
    monkeypatch.setattr(sample_module, "BLOCK", 10**9)
    np.testing.assert_array_equal(blocked, sample_ids(model, params, prime, length=30, seed=3))


# ---- every command that reports a number reports a finite one, or fails naming why -------

TINY_RUN = ["--hidden", "8", "--batch", "4", "--seq-len", "16", "--eval-every", "2",
            "--no-progress", "--backend", "numpy", "--steps", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A small run, and a copy whose output weights overflow float32 (finite, so the
    checkpoint loads; every score and norm computed from them is not)."""
    import dataclasses

    from train_helpers import SMALL_TEXT

    from bptt import cli
    from bptt.train.checkpoint import load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("garbage")
    (root / "text.txt").write_text(SMALL_TEXT, encoding="utf-8")
    argv = ["train", "--text", str(root / "text.txt"), *TINY_RUN, "--checkpoint-dir"]
    assert cli.main([*argv, str(root / "run")]) == 0
    ckpt = load_checkpoint(root / "run" / "best.npz")
    params = {**ckpt.params, "V": np.sign(ckpt.params["V"]) * np.float32(3e38)}
    save_checkpoint(root / "overflow.npz", dataclasses.replace(ckpt, params=params))
    return root


def _gradcheck_nan(monkeypatch) -> None:
    _nan_loss(monkeypatch)


# (what diverges, argv (RUN, OVERFLOW and TEXT stand for the files), a monkeypatch or None,
#  the one line's fragment). Every row: exit 1, one stderr line, no NaN or inf printed.
DIVERGED = [
    ("dynamic: every tuned setting", ["evaluate", "RUN", "--dynamic", "--rule", "sgd", "--lr",
     "1e300", "1e301", "--tune-chars", "200"], None,
     "every setting diverged (NaN or infinite bits/char) on the tuning part"),
    ("dynamic: the one setting given", ["evaluate", "RUN", "--dynamic", "--rule", "sgd", "--lr",
     "1e300", "--tune-chars", "0"], None, "dynamic evaluation diverged with sgd: lr 1e+300"),
    ("dynamic: the static part", ["evaluate", "OVERFLOW", "--dynamic", "--rule", "sgd",
     "--tune-chars", "0", "--lr", "0"], None, "static scoring: nan bits/char"),
    ("dynamic: the rms statistics", ["evaluate", "OVERFLOW", "--dynamic", "--tune-chars", "0",
     "--lr", "1e-5", "--decay", "0"], None, "--rule rms: the training gradient's RMS is NaN"),
    ("static score", ["evaluate", "OVERFLOW"], None, "static: nan bits/char"),
    ("diagnose: a spectral radius", ["diagnose", "--init", "--nonlinearity", "relu",
     "--spectral-radius", "50", "--seq-len", "400", "--dtype", "float32"], None,
     "--spectral-radius 50: the gradient norms are NaN or infinite"),
    ("diagnose: a checkpoint", ["diagnose", "OVERFLOW", "--dtype", "float32"], None,
     "the checkpoint's W: the gradient norms are NaN or infinite"),
    ("gradcheck: a NaN loss", ["gradcheck"], _gradcheck_nan, "the loss is nan; nothing to check"),
    ("train: the loss", ["train", "--text", "TEXT", *TINY_RUN, "--optimizer", "sgd", "--lr",
     "1e38", "--clip", "0", "--checkpoint-dir", "NEW"], None,
     "became NaN or infinite at step 2; no checkpoint was written. Start the run again"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "patch", "fragment"), [d[1:] for d in DIVERGED],
                         ids=[d[0] for d in DIVERGED])  # fmt: skip
def test_no_command_reports_a_nan_score(runs, tmp_path, monkeypatch, capsys, argv, patch,
                                        fragment) -> None:  # fmt: skip
    from bptt import cli

    files = {"RUN": str(runs / "run"), "OVERFLOW": str(runs / "overflow.npz"),
             "TEXT": str(runs / "text.txt"), "NEW": str(tmp_path / "new")}  # fmt: skip
    if patch is not None:
        patch(monkeypatch)
    assert cli.main([files.get(a, a) for a in argv]) == 1
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert re.search(r"\b(nan|-?inf)\b", out) is None, out


def test_stats_chunks_reports_the_chunks_used(runs, capsys) -> None:
    """More --stats-chunks than the training text holds: the count used is printed."""
    from bptt import cli

    assert cli.main(["evaluate", str(runs / "run"), "--dynamic", "--tune-chars", "0", "--lr",
                     "1e-5", "--decay", "0", "--stats-chunks", "100000"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    used = re.search(r"gradient RMS from (\d+) chunks \(of the 100000 asked for", out)
    assert used is not None and int(used.group(1)) < 100000, out


def test_a_diverged_setting_in_a_tuning_grid_is_named_not_scored(runs, capsys) -> None:
    from bptt import cli

    assert cli.main(["evaluate", str(runs / "run"), "--dynamic", "--rule", "sgd", "--lr",
                     "1e-3", "1e300", "--tune-chars", "200"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert re.search(r"lr 1e\+300, decay 0 +diverged \(NaN or infinite\)\n", out), out
    assert re.search(r"\b(nan|-?inf)\b", out) is None, out
