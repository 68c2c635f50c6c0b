"""The training loop: learning, every optimizer on every backend, exact resume, NaN stop."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from train_helpers import small_config, small_corpus, small_trainer

import bptt
from bptt import backends, train
from bptt.text.data import Corpus
from bptt.train.checkpoint import BEST, LATEST, load_checkpoint

NUMPY = backends.get_backend("numpy")


def _host(trainer: train.Trainer) -> dict[str, np.ndarray]:
    return {k: trainer.backend.to_numpy(v) for k, v in trainer.params.items()}


def test_loss_falls_on_a_small_slice() -> None:
    """200 small steps (well under a second) beat the text's own unigram model."""
    trainer = small_trainer(NUMPY, hidden=32, batch=8, lr=1e-2, log_every=25, eval_every=1000)
    before = trainer.validate()
    result = trainer.run(steps=200)
    bpc = trainer.history["train_bpc"]
    assert bpc[-1] < bpc[0] - 1.0, bpc
    corpus = trainer.corpus
    counts = np.bincount(corpus.train, minlength=len(corpus.vocab)) + 1.0
    unigram = float(-np.log2(counts / counts.sum())[corpus.val[1:]].mean())
    assert result.last_val < unigram - 0.5 < before, (before, unigram, result.last_val)


OPTIMIZERS = {
    "sgd": dict(optimizer="sgd", lr=0.5, momentum=0.9, clip=1.0),
    "adagrad": dict(optimizer="adagrad", lr=0.1, clip=0.0),
    "rmsprop": dict(optimizer="rmsprop", lr=1e-2, weight_decay=1e-3, lr_decay=0.5),
    "adam": dict(optimizer="adam", lr=1e-2, weight_decay=1e-2, dropout=0.3),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_on_every_backend(be, name: str, tmp_path) -> None:
    """The whole job on each backend (device1 refuses NumPy leaks) matches NumPy's run."""
    trainer = small_trainer(be, tmp_path, **OPTIMIZERS[name])
    result = trainer.run(steps=7)
    assert result.step == 7 and result.reason == "steps"
    for key, value in trainer.params.items():
        assert backends.library_name(value) == be.name, key
        assert value.device == be.device, key
    for path, value in bptt.optim.state_arrays(trainer.opt_state).items():
        assert value.device == be.device, path
    assert math.isfinite(result.last_val) and result.latest.exists() and result.best.exists()
    reference = small_trainer(NUMPY, dtype=trainer.config.dtype, **OPTIMIZERS[name])
    reference.run(steps=7)
    rtol = 1e-10 if trainer.config.dtype == "float64" else 1e-4
    ours, ref = _host(trainer), _host(reference)
    for key in ref:
        np.testing.assert_allclose(ours[key], ref[key], rtol=rtol, atol=rtol)


def _snapshot(trainer: train.Trainer) -> dict[str, np.ndarray]:
    ckpt = trainer.checkpoint()
    out = {f"param/{k}": v for k, v in ckpt.params.items()}
    out.update({f"opt/{k}": v for k, v in ckpt.opt_state.items()})
    out["hidden"] = ckpt.hidden
    return out


@pytest.mark.parametrize("schedule", ["single", "overlap", "split"])
def test_resume_is_exact(tmp_path, schedule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training 2N steps equals N steps, a checkpoint, and N more: identical bits,
    with the single schedule, the overlapped one (a worker thread on NumPy) and the
    batch split (each part on its own thread)."""
    monkeypatch.setenv("BPTT_SCHEDULE", schedule)
    options = dict(batch=16, dropout=0.2, eval_every=4, log_every=2)  # 20 chunks per epoch
    N = 14  # the second half crosses an epoch boundary (state reset, new offset)
    straight = small_trainer(NUMPY, **options)
    straight.run(steps=2 * N)
    assert straight.state.epoch == 1

    first = small_trainer(NUMPY, tmp_path, **options)
    first.run(steps=N)
    resumed = train.Trainer.resume(load_checkpoint(tmp_path / LATEST), small_corpus())
    resumed.run(steps=2 * N)
    a, b = _snapshot(straight), _snapshot(resumed)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    a, b = resumed.state, straight.state
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    assert (a.epoch, a.chunk, a.offset) == (b.epoch, b.chunk, b.offset)


def test_nan_stops_naming_the_first_bad_step(tmp_path, monkeypatch) -> None:
    trainer = small_trainer(NUMPY, tmp_path, log_every=3, eval_every=5)
    trainer.run(steps=5)
    latest = tmp_path / LATEST
    good = latest.read_bytes()
    calls = []
    original = trainer.train_step

    def poisoned(*args, **kwargs):
        carry, loss, norm = original(*args, **kwargs)
        calls.append(1)
        return carry, (loss * math.nan if len(calls) == 2 else loss), norm  # step 7

    monkeypatch.setattr(trainer, "train_step", poisoned)
    with pytest.raises(train.NonFiniteError, match="NaN or infinite at step 7") as info:
        trainer.run(steps=20)
    assert info.value.step == 7
    assert trainer.step == 9  # noticed at the next read, the log of step 9
    assert latest.read_bytes() == good


def test_infinite_validation_stops_and_is_never_best(tmp_path, monkeypatch) -> None:
    """Finite but diverged parameters (validation loss inf) stop training at that
    evaluation; neither latest.npz nor best.npz takes the diverged model."""
    trainer = small_trainer(NUMPY, tmp_path, log_every=5, eval_every=5)
    trainer.run(steps=5)
    good = {name: (tmp_path / name).read_bytes() for name in (LATEST, BEST)}
    monkeypatch.setattr(train.Trainer, "validate", lambda self: math.inf)
    with pytest.raises(
        train.NonFiniteError, match="validation loss became NaN or infinite at step 10"
    ):
        trainer.run(steps=20)
    assert trainer.step == 10 and trainer.best["best_step"] == 5
    assert {name: (tmp_path / name).read_bytes() for name in (LATEST, BEST)} == good


def test_divergence_keeps_the_last_good_checkpoint(tmp_path) -> None:
    trainer = small_trainer(NUMPY, tmp_path, dtype="float32", eval_every=3, log_every=3)
    trainer.run(steps=3)
    good = (tmp_path / LATEST).read_bytes()
    blown = train.Trainer.resume(
        load_checkpoint(tmp_path), small_corpus(), lr=1e36, clip=0.0, eval_every=1000
    )
    blown.checkpoint_dir = tmp_path
    resumed = r"at step \d+; this run wrote no checkpoint; the one it resumed from \(step 3\)"
    with pytest.raises(train.NonFiniteError, match=resumed):  # names only what it wrote
        blown.run(steps=30)
    assert (tmp_path / LATEST).read_bytes() == good
    with pytest.raises(train.NonFiniteError, match="no checkpoint written"):
        blown.save()


def test_no_host_reads_inside_steps(monkeypatch) -> None:
    """On device1, every conversion to a host value is counted: only at log steps."""
    be = backends.get_backend("array_api_strict", "device1")
    Array = type(be.asarray(0))
    reads = []
    for name in ("__bool__", "__float__", "__int__", "__index__"):
        original = getattr(Array, name)

        def counting(self, _original=original):
            reads.append(1)
            return _original(self)

        monkeypatch.setattr(Array, name, counting)
    counting_be = dataclasses.replace(be, _to_numpy=lambda x: (reads.append(1), be.to_numpy(x))[1])
    trainer = small_trainer(counting_be, log_every=4, eval_every=1000)
    seen = []

    class Recorder(train.Reporter):
        def on_step(self, step: int) -> None:
            seen.append(len(reads))

    trainer.run(steps=13, reporter=Recorder())
    per_step = np.diff(seen)  # reads between the ends of consecutive steps
    read_after = [k + 1 for k in np.nonzero(per_step)[0]]  # the step whose end made reads
    assert read_after == [4, 8, 12], (seen, read_after)
    assert set(per_step[per_step > 0].tolist()) == {1}  # one read per log


def test_validation_carries_state_through_the_text() -> None:
    """S streams with warm-up score each character once; with warm-up covering the
    whole text they equal one stream, and one stream equals a direct computation."""
    corpus = small_corpus()
    model = bptt.RNN(len(corpus.vocab), 10, len(corpus.vocab))
    params = model.init(dtype="float64", seed=3)
    ids = corpus.val
    one = train.layout_validation(ids, streams=1, warmup=0, backend=NUMPY, dtype="float64")
    many = train.layout_validation(ids, streams=5, warmup=len(ids), backend=NUMPY, dtype="float64")
    some = train.layout_validation(ids, streams=5, warmup=20, backend=NUMPY, dtype="float64")
    for v in (one, many, some):
        assert v.count == len(ids) - 1 and float(np.sum(v.weight)) == len(ids) - 1
    _, logits = model.forward(params, ids[:-1, None])  # (N-1, 1, C): one pass, full state
    g = logits[:, 0, :]
    logp = g - g.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    direct = -logp[np.arange(len(ids) - 1), ids[1:]].mean() / math.log(2)
    assert train.evaluate(model, params, one, chunk=37) == pytest.approx(direct, rel=1e-12)
    assert train.evaluate(model, params, many, chunk=37) == pytest.approx(direct, rel=1e-12)
    assert train.evaluate(model, params, some) == pytest.approx(direct, rel=1e-3)


def test_early_stopping_keeps_best_apart(tmp_path, monkeypatch) -> None:
    trainer = small_trainer(NUMPY, tmp_path, eval_every=2, patience=2)
    values = iter([3.0, 2.5, 2.7, 2.6, 1.0])
    monkeypatch.setattr(trainer, "validate", lambda: next(values))
    result = trainer.run(steps=100)
    assert result.reason == "early_stop" and result.step == 8
    assert (result.best_val, result.best_step) == (2.5, 4)
    assert load_checkpoint(tmp_path / "best.npz").step == 4
    assert load_checkpoint(tmp_path / LATEST).step == 8


def test_early_stopping_on_a_small_text(tmp_path, capsys) -> None:
    """A real run on a 5,400-character training text overfits within a few hundred steps:
    --patience 3 stops it 3 validations after its best, keeps that best checkpoint, and
    the summary says why in words."""
    from train_helpers import SMALL_TEXT

    from bptt import cli

    config = dict(hidden=64, lr=1e-2, eval_every=10, patience=3)
    trainer = small_trainer(NUMPY, tmp_path / "lib", **config)
    result = trainer.run(steps=2000)
    assert result.reason == "early_stop" and result.step < 1000, result
    assert result.step == result.best_step + 3 * 10
    vals = dict(zip(trainer.history["val_step"], trainer.history["val_bpc"], strict=True))
    assert min(vals.values()) == vals[result.best_step] == result.best_val
    assert all(v > result.best_val for s, v in vals.items() if s > result.best_step)
    assert load_checkpoint(tmp_path / "lib" / BEST).step == result.best_step
    path = tmp_path / "text.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    args = ["train", "--text", str(path), "--backend", "numpy", "--hidden", "64", "--batch", "4",
            "--seq-len", "16", "--lr", "1e-2", "--eval-every", "10", "--log-every", "10",
            "--no-progress", "--checkpoint-dir", str(tmp_path / "cli")]  # fmt: skip
    assert cli.main([*args, "--steps", "2000", "--patience", "3"]) == 0
    out = capsys.readouterr().out
    assert "early stopping: no new best validation in the last 3 evaluations" in out
    assert load_checkpoint(tmp_path / "cli" / LATEST).step == result.step  # the same run


def test_the_summary_says_what_patience_would_have_saved() -> None:
    from types import SimpleNamespace as NS

    from bptt.cli.train import stop_reason

    def trainer(patience, since):
        return NS(config=small_config(patience=patience), best={"evals_since": since})

    ran_on = NS(reason="steps", best_step=400)
    assert stop_reason(ran_on, trainer(None, 18)) == (
        "the step budget is reached; the best validation was 18 evaluations ago "
        "(--patience 5 would have stopped at step 425)"  # eval_every 5 in small_config
    )
    assert stop_reason(ran_on, trainer(None, 4)) == "the step budget is reached"
    assert stop_reason(NS(reason="time", best_step=5), trainer(3, 2)) == (
        "the time budget is reached"
    )


def test_stops_on_time_and_on_request() -> None:
    trainer = small_trainer(NUMPY)
    assert trainer.run(minutes=1e-9).reason == "time"
    result = trainer.run(steps=50, should_stop=lambda: trainer.step >= 3)
    assert (result.reason, result.step) == ("interrupted", 3)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="hidden: expected a positive integer"):
        small_config(hidden=0)
    with pytest.raises(ValueError, match="lr: expected a positive"):
        small_config(lr=0.0)
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\)"):
        small_config(dropout=1.0)
    with pytest.raises(ValueError, match="optimizer: expected one of"):
        small_config(optimizer="lbfgs")
    with pytest.raises(ValueError, match="give steps or minutes"):
        small_trainer(NUMPY).run()
    tiny = Corpus.from_text("abcdefgh" * 10, source="tiny")
    with pytest.raises(bptt.text.data.DataError, match="too short"):
        train.Trainer.create(tiny, small_config())
