"""``bptt evaluate`` and bptt.evaluation.heldout: the held-out score equals the training loop's own
validation, on every backend; the text is the run's held-out split by default; characters
outside the vocabulary are an error naming them, or left out on request."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from train_helpers import SMALL_TEXT, small_config

from bptt import backends, cli, train
from bptt.evaluation.heldout import held_out, run_text, validation_score
from bptt.text import data
from bptt.train.checkpoint import BEST, load_checkpoint


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return path


def _short_run(be, text_file: Path, run_dir: Path, steps: int = 5) -> train.TrainResult:
    config = small_config()
    if not be.supports(config.dtype):
        config = small_config(dtype="float32")
    corpus = data.load_corpus(text=text_file)
    trainer = train.Trainer.create(
        corpus, config, backend=be, checkpoint_dir=run_dir, compile="none"
    )  # JAX: no jit compile (seconds) for 5 steps
    return trainer.run(steps=steps)  # fmt: skip


def test_evaluate_equals_the_training_validation_on_every_backend(be, text_file, tmp_path):
    """A short run validates at its last step; scoring its checkpoint on the run's own
    held-out text, on the same backend, gives that figure (to rounding)."""
    result = _short_run(be, text_file, tmp_path / "run")
    ckpt = load_checkpoint(result.latest)
    text = held_out(ckpt.vocab, ckpt.config)
    assert "validation split" in text.description and not text.removed
    dtype = ckpt.train.dtype
    with be.activate():
        params = {k: be.asarray(v, dtype=dtype) for k, v in ckpt.params.items()}
    train_cfg = ckpt.config["train"]
    bpc, count = validation_score(ckpt.model, params, text.ids, streams=train_cfg["val_streams"],
                                  warmup=train_cfg["val_warmup"], backend=be,
                                  dtype=dtype)  # fmt: skip
    assert count == len(text.ids) - 1 == ckpt.config["data"]["n_val"] - 1
    assert bpc == pytest.approx(result.last_val, rel=1e-6, abs=1e-6), (bpc, result.last_val)


def test_the_command_prints_the_runs_validation_figure(text_file, tmp_path, capsys) -> None:
    result = _short_run(backends.get_backend("numpy"), text_file, tmp_path / "run", steps=10)
    assert cli.main(["evaluate", str(tmp_path / "run")]) == 0  # the directory: its best.npz
    out = capsys.readouterr().out
    best = load_checkpoint(tmp_path / "run" / BEST)
    assert f"{result.best_val:.4f} bits/char" in out and f"(step {best.step}," in out
    n_val = best.config["data"]["n_val"]
    assert f"over {n_val - 1:,} characters" in out


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_a_relu_stack_is_scored_as_it_was_trained(text_file, tmp_path, capsys, dynamic) -> None:
    """The checkpoint's architecture travels into evaluate: a 2-layer relu run's figure,
    statically; dynamically, a zero step gives the static score of the same characters
    (a tanh pass over relu weights would give another)."""
    config = small_config(layers=2, cell="relu")
    corpus = data.load_corpus(text=text_file)
    trainer = train.Trainer.create(corpus, config, backend="numpy",
                                   checkpoint_dir=tmp_path / "run")  # fmt: skip
    result = trainer.run(steps=10)
    args = ["evaluate", str(result.latest)]
    if dynamic:
        args += ["--dynamic", "--rule", "sgd", "--lr", "0", "--tune-chars", "0"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "L=2, relu" in out
    if not dynamic:
        assert f"static: {result.last_val:.4f} bits/char" in out, out
    else:  # the walk's static line is relu's score of those characters, not tanh's
        from bptt.evaluation.dynamic import layout_walk, score_static

        static = out.split("static:")[1].split()[0]
        assert f"dynamic: {static} bits/char" in out, out
        ckpt = load_checkpoint(result.latest)
        ids = held_out(ckpt.vocab, ckpt.config).ids
        walk = layout_walk(ids, seq_len=10, warmup=config.val_warmup, backend=trainer.backend)
        params = {k: np.asarray(v) for k, v in ckpt.params.items()}
        model = ckpt.model
        assert model.cell == "relu" and model.layers == 2
        relu, tanh = (
            score_static(params, walk, model=model.replace(cell=n)).bpc for n in ("relu", "tanh")
        )
        assert static == f"{relu:.4f}" != f"{tanh:.4f}", (static, relu, tanh)


def test_other_texts_and_unknown_characters(text_file, tmp_path, capsys) -> None:
    _short_run(backends.get_backend("numpy"), text_file, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / BEST)
    other = tmp_path / "other.txt"
    other.write_text("while x: pass\n" * 5 + "€ ¤ €\n", encoding="utf-8")
    with pytest.raises(data.DataError, match=r"2 distinct character\(s\) .*'¤€' \(3 occ"):
        held_out(ckpt.vocab, ckpt.config, text=other)
    kept = held_out(ckpt.vocab, ckpt.config, text=other, unknown="skip")
    assert kept.removed == {"€": 2, "¤": 1} and kept.description.startswith("all of")
    assert data.Vocab(ckpt.vocab).decode(kept.ids) == "while x: pass\n" * 5 + "  \n"
    # the command: an argparse error naming them, or the text scored without them
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", str(tmp_path / "run"), "--text", str(other)])
    assert exit_.value.code == 2 and "'¤€'" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "run"), "--text", str(other),
                     "--unknown", "skip"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "left out: 3 characters outside the vocabulary" in out
    assert f"over {len(kept.ids) - 1:,} characters" in out
    # a file's validation split, and the run's text changed since training
    tail = held_out(ckpt.vocab, ckpt.config, text=text_file, split="validation")
    assert np.array_equal(tail.ids, held_out(ckpt.vocab, ckpt.config).ids)
    text_file.write_text(SMALL_TEXT[::-1], encoding="utf-8")
    with pytest.raises(data.DataError, match="has changed since this checkpoint"):
        run_text(ckpt.config)
    with pytest.raises(SystemExit):  # the rms rule's statistics need the training text
        cli.main(["evaluate", str(tmp_path / "run"), "--text", str(other), "--unknown", "skip",
                  "--dynamic", "--tune-chars", "0", "--lr", "1e-5", "--decay", "0"])  # fmt: skip
    assert "Use --rule sgd, which needs none" in capsys.readouterr().err


def test_a_built_in_corpus_by_name(tmp_path) -> None:
    """--corpus NAME: that corpus's held-out tail, over the model's vocabulary."""
    text = data.builtin_text("topics")
    vocab = "".join(sorted(set(text)))
    config = {"data": {"source": "corpus:topics", "val_fraction": 0.1}}
    mine, named = held_out(vocab, config), held_out(vocab, {}, corpus="topics")
    assert np.array_equal(mine.ids, named.ids)
    assert len(mine.ids) == len(text) - round(len(text) * 0.9)
    assert math.isclose(len(mine.ids) / len(text), 0.1, rel_tol=1e-3)
