"""Dynamic evaluation (bptt.evaluation.dynamic): every segment is scored before its own update;
a zero step is static evaluation exactly; the steps are the library's own BPTT; the
settings are tuned on a part that is then not scored; one host read per walk."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bptt
from bptt import backends, cli
from bptt.evaluation import dynamic as dynamic_eval
from bptt.evaluation.dynamic import (
    Update,
    evaluate_dynamic,
    gradient_rms,
    layout_walk,
    score_dynamic,
    score_static,
)
from bptt.text.data import Streams

NUMPY = backends.get_backend("numpy")
M, D, T = 7, 12, 8
MODEL = bptt.RNN(M, D, M)


def _params(be=NUMPY, dtype="float64", seed=3, hidden=D):
    model = MODEL.replace(hidden_size=hidden)
    return model.init(dtype=dtype, seed=seed, backend=be.name, device=be.device)


def _repeated(n: int = 120, seed: int = 0) -> np.ndarray:
    """A text whose second half repeats its first: a model that adapts scores it better."""
    half = np.random.default_rng(seed).integers(0, M, n)
    return np.concatenate([half, half])


def _segment_nats(params, x, y, h0):
    """Summed nats of one segment from bptt.forward and a log-softmax written here."""
    states, logits = bptt.forward(params, x, h0=h0)
    g = logits[:, 0, :]
    logp = g - g.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y[:, 0]].sum(), states[-1]


def _replay(params, ids, update, rms=None):
    """Dynamic evaluation spelled out: score segment k with theta_k (a forward pass),
    then theta_{k+1} from bptt.loss_and_grad's gradient. Returns (before, after): each
    segment's score with the weights before and after its own update."""
    theta = {k: np.array(v) for k, v in params.items()}
    flat0 = np.concatenate([v.ravel() for v in params.values()])
    if update.rule == "rms":
        scale = update.lr / (rms + update.eps)
        decay = np.minimum(update.decay * rms / rms.mean(), 1.0)
    else:
        scale, decay = update.lr, update.decay
    x, y = ids[:-1, None], ids[1:, None]
    h, before, after = None, [], []
    for a in range(0, len(x), T):
        xs, ys = x[a : a + T], y[a : a + T]
        nats, h_next = _segment_nats(theta, xs, ys, h)
        _, grads, _ = bptt.loss_and_grad(theta, xs, ys, h0=h)  # mean over the segment
        flat = np.concatenate([v.ravel() for v in theta.values()])
        g = np.concatenate([grads[k].ravel() for k in theta])
        flat = flat - scale * g + decay * (flat0 - flat)
        parts = np.split(flat, np.cumsum([v.size for v in theta.values()])[:-1])
        theta = {k: p.reshape(v.shape) for (k, v), p in zip(theta.items(), parts, strict=True)}
        after.append(_segment_nats(theta, xs, ys, h)[0])
        before.append(nats)
        h = h_next
    return np.asarray(before), np.asarray(after)


def _rms_of(params, ids, model=MODEL):
    return gradient_rms(params, ids, seq_len=T, batch=3, model=model)


@pytest.mark.parametrize("rule", ["sgd", "rms"])
def test_each_segment_is_scored_before_its_update(rule: str) -> None:
    model = MODEL.replace(hidden_size=32)
    params, ids = _params(hidden=32), _repeated(40)
    rms = _rms_of(params, _repeated(300, seed=1), model) if rule == "rms" else None
    update = Update("sgd", 1.0, 0.01) if rule == "sgd" else Update("rms", 1e-2, 0.01, 1e-4)
    walk = layout_walk(ids, seq_len=T, backend=NUMPY)
    got = score_dynamic(params, walk, update, rms=rms, model=model)
    before, after = _replay(params, ids, update, rms)
    assert got.segments.shape == before.shape == (math.ceil((len(ids) - 1) / T),)
    np.testing.assert_allclose(got.segments, before, rtol=1e-10)
    # the test can tell: a segment scored after its own update scores better, clearly
    assert np.mean(after < before - 1e-3) > 0.9, after - before
    static = score_static(params, walk, model=model)
    assert got.segments[0] == static.segments[0]  # nothing learned yet
    second = slice(len(before) // 2 + 1, None)  # segments wholly in the repeated half
    assert got.segments[second].sum() < 0.93 * static.segments[second].sum()  # it adapted
    assert got.count == static.count == len(ids) - 1


def test_a_zero_step_is_static_evaluation_exactly(be) -> None:
    """On every backend (JAX: the segment step under jax.jit). Whole segments only and
    no warm-up here, so that JAX compiles few shapes; both are exercised on NumPy."""
    dtype = "float64" if be.supports("float64") else "float32"
    params, ids = _params(be, dtype), _repeated(30)[: 5 * T + 1]
    walk = layout_walk(ids, seq_len=T, backend=be)
    static = score_static(params, walk, model=MODEL)
    n = sum(int(np.prod(v.shape)) for v in params.values())
    rms = be.asarray(np.random.default_rng(0).random(n) + 0.1, dtype=dtype)  # any RMS will do
    for update in (Update("sgd", 0.0, 0.0), Update("rms", 0.0, 0.0, 1e-4)):
        dynamic = score_dynamic(params, walk, update, rms=rms, model=MODEL)
        assert np.array_equal(dynamic.segments, static.segments), update
    # and the static walk is the forward pass carried through the text (to rounding)
    host = {k: be.to_numpy(v) for k, v in params.items()}
    nats, _ = _segment_nats(host, ids[:-1, None], ids[1:, None], None)
    rel = 1e-10 if dtype == "float64" else 1e-5
    assert static.nats == pytest.approx(nats, rel=rel) and static.count == 5 * T


def test_warm_up_and_a_short_last_segment() -> None:
    """The scored part after ``start`` is predicted from all the text before it when the
    warm-up covers it; a last segment shorter than T is scored too."""
    params, ids = _params(), _repeated(30)
    walk = layout_walk(ids, seq_len=T, start=9, warmup=20, backend=NUMPY)
    assert walk.bounds()[-1][1] - walk.bounds()[-1][0] < T
    static = score_static(params, walk, model=MODEL)
    nats, _ = _segment_nats(params, ids[:-1, None], ids[1:, None], None)
    skipped, _ = _segment_nats(params, ids[:8, None], ids[1:9, None], None)
    assert static.nats == pytest.approx(nats - skipped, rel=1e-10)
    assert static.count == len(ids) - 9
    dynamic = score_dynamic(params, walk, Update("sgd", 0.0), model=MODEL)
    assert np.array_equal(dynamic.segments, static.segments)


def test_the_steps_are_the_librarys_bptt(monkeypatch) -> None:
    """One call of the library's BPTT step (the schedule's pure step, resolved once for the
    model) per segment, and the update uses its gradient."""
    calls = []
    make_plan = dynamic_eval.make_plan

    def planning(model, schedule, reduction):
        assert model is MODEL and reduction == "sum"  # the model it was given
        plan = make_plan(model, schedule, reduction)

        def counted(*shape):
            run, weights = plan(*shape)

            def counting(params, inputs, *args, **kwargs):
                calls.append(inputs.shape)
                return run(params, inputs, *args, **kwargs)

            return counting, weights

        return counted

    monkeypatch.setattr(dynamic_eval, "make_plan", planning)
    monkeypatch.setattr(dynamic_eval, "_STEPS", {})  # steps made by earlier tests are reused
    params, ids = _params(), _repeated(30)
    walk = layout_walk(ids, seq_len=T, backend=NUMPY)
    got = score_dynamic(params, walk, Update("sgd", 0.5), model=MODEL)
    assert calls == [(T, 1)] * (len(walk.bounds()) - 1) + [((len(ids) - 2) % T + 1, 1)]
    before, _ = _replay(params, ids, Update("sgd", 0.5))
    np.testing.assert_allclose(got.segments, before, rtol=1e-10)


def test_gradient_rms_over_training_chunks() -> None:
    params, ids = _params(), _repeated(200, seed=2)
    rms = gradient_rms(params, ids, seq_len=T, batch=3, chunks=4, model=MODEL)
    matrix = Streams(len(ids), 3, T).epoch_matrix(ids, 0)
    h, total = None, 0.0
    for k in range(4):
        x, y = matrix[k * T : (k + 1) * T], matrix[k * T + 1 : (k + 1) * T + 1]
        _, grads, h = bptt.loss_and_grad(params, x, y, h0=h)
        total = total + np.concatenate([grads[key].ravel() for key in params]) ** 2
    np.testing.assert_allclose(rms, np.sqrt(total / 4), rtol=1e-12)
    with pytest.raises(ValueError, match="too few for chunks"):
        gradient_rms(params, ids[:T], seq_len=T, batch=3, model=MODEL)


def test_tuning_chooses_on_a_part_that_is_not_scored() -> None:
    params, ids = _params(), _repeated(150)
    candidates = [Update("sgd", lr) for lr in (0.0, 0.3, 3.0)]
    result = evaluate_dynamic(params, ids, candidates, tune_chars=100, seq_len=T, warmup=10,
                              backend=NUMPY, model=MODEL)  # fmt: skip
    scores = dict(result.tuning)
    assert list(scores) == candidates and result.chosen == min(scores, key=scores.get)
    assert result.static.count == result.dynamic.count == len(ids) - 101
    # the scored part depends on the tuning part only through the choice and the warm-up
    changed = ids.copy()
    changed[:80] = (changed[:80] + 1) % M
    alone = evaluate_dynamic(params, changed, [result.chosen], tune_chars=100, seq_len=T,
                             warmup=10, backend=NUMPY,
                             model=MODEL)  # fmt: skip
    assert np.array_equal(alone.dynamic.segments, result.dynamic.segments)
    assert alone.tuning == []
    with pytest.raises(ValueError, match="needs a tuning part"):
        evaluate_dynamic(params, ids, candidates, tune_chars=0, seq_len=T, warmup=0,
                         backend=NUMPY, model=MODEL)  # fmt: skip


def test_update_errors() -> None:
    with pytest.raises(ValueError, match="rule: expected one of"):
        Update("adam")
    with pytest.raises(ValueError, match="lr: expected a number >= 0"):
        Update("sgd", -1.0)
    with pytest.raises(ValueError, match="eps: expected a positive number"):
        Update("rms", 1e-3, 0.0, 0.0)
    walk = layout_walk(_repeated(20), seq_len=T, backend=NUMPY)
    with pytest.raises(ValueError, match="the 'rms' rule needs the gradient's RMS"):
        score_dynamic(_params(), walk, Update("rms"), model=MODEL)
    with pytest.raises(ValueError, match="start: expected 1 <= start"):
        layout_walk(_repeated(20), seq_len=T, start=40, backend=NUMPY)


def test_the_command_tunes_then_scores_the_rest(tmp_path, capsys) -> None:
    from train_helpers import SMALL_TEXT, small_config

    from bptt import train
    from bptt.text import data

    path = tmp_path / "text.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    trainer = train.Trainer.create(data.load_corpus(text=path), small_config(),
                                   backend=NUMPY, checkpoint_dir=tmp_path / "run")  # fmt: skip
    trainer.run(steps=5)
    n_val = len(trainer.corpus.val)
    args = ["evaluate", str(tmp_path / "run"), "--dynamic", "--seq-len", "10",
            "--tune-chars", "200", "--stats-chunks", "3"]  # fmt: skip
    assert cli.main([*args, "--lr", "1e-3", "3e-3", "--decay", "0", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "chosen on the first 200 characters, which are not scored" in out
    assert out.count("bits/char") == 4 + 2 and "<- chosen" in out
    assert f"scored: the last {n_val - 201:,} characters" in out
    assert cli.main([*args, "--rule", "sgd", "--lr", "0.1", "--tune-chars", "0"]) == 0
    out = capsys.readouterr().out
    assert "every character scored" in out and f"the last {n_val - 1:,} characters" in out
