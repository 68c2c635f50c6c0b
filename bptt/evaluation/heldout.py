"""Scoring a trained checkpoint on held-out text, as ``bptt evaluate`` does.

:func:`held_out` finds the text: by default the held-out tail of the text the run
was trained on (the same characters its validation scored), or another file or
built-in corpus, encoded with the *model's* vocabulary. :func:`validation_score`
scores it exactly as the training loop's validation does (:mod:`bptt.text.validation`:
S streams, each warmed up on the characters before it, one host read), so on the
run's own text it reproduces the run's validation figure. Dynamic evaluation is
:mod:`bptt.evaluation.dynamic`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..text import data
from ..text.validation import evaluate, layout_validation

__all__ = ["UNKNOWN", "HeldOut", "held_out", "run_text", "validation_score"]

UNKNOWN = ("error", "skip")  # what to do with characters outside the model's vocabulary


@dataclass
class HeldOut:
    """A text to score, as ids over the model's vocabulary."""

    ids: np.ndarray  # (N,) int64
    description: str  # e.g. "the validation split of corpus:topics"
    removed: dict[str, int] = field(default_factory=dict)  # unknown character -> count


def run_text(
    config: dict[str, Any], *, max_bytes: int | None = data.DEFAULT_MAX_TEXT_BYTES
) -> tuple[str, str, float]:
    """(text, source, val_fraction) of the text a checkpoint's run trained on.

    A built-in corpus is rebuilt; a file is read again and must still hold what the
    run trained on (its SHA-256 is in the checkpoint). Raises DataError otherwise.
    """
    info = config.get("data", {}) if config else {}
    source, fraction = info.get("source"), float(info.get("val_fraction", 0.1))
    if not source:
        raise data.DataError("checkpoint: it does not record the text it was trained on; "
                             "pass --text FILE or --corpus NAME")  # fmt: skip
    if source.startswith("corpus:"):
        return data.builtin_text(source[len("corpus:") :]), source, fraction
    try:
        text = data.read_text(source, max_bytes=max_bytes)
    except data.DataError as e:
        raise data.DataError(f"{e} (the text this checkpoint was trained on); pass --text FILE "
                             "or --corpus NAME to score another") from None  # fmt: skip
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if info.get("sha256") not in (None, digest):
        raise data.DataError(f"text: {source!r} has changed since this checkpoint was trained "
                             "on it (its SHA-256 differs); pass --text FILE to score it as it "
                             "is now")  # fmt: skip
    return text, source, fraction


def _encode(text: str, vocab: data.Vocab, name: str, unknown: str) -> tuple[np.ndarray, dict]:
    """Ids of ``text``; characters outside ``vocab`` raise DataError (``"error"``) or are
    left out and counted (``"skip"``)."""
    outside = sorted(set(text) - set(vocab.chars))
    if not outside:
        return vocab.encode(text, name=name), {}
    counts = {ch: text.count(ch) for ch in outside}
    if unknown == "error":
        shown = "".join(outside[:40]) + ("..." if len(outside) > 40 else "")
        raise data.DataError(
            f"{name}: {len(outside)} distinct character(s) are not in the model's vocabulary "
            f"of {len(vocab)}: {shown!r} ({sum(counts.values()):,} occurrences); score the text "
            "without them with unknown='skip' (bptt evaluate --unknown skip)"
        )
    kept = text.translate({ord(ch): None for ch in outside})
    return vocab.encode(kept, name=name), counts


def held_out(vocab: str, config: dict[str, Any], *, text: str | None = None,
             corpus: str | None = None, split: str | None = None, unknown: str = "error",
             max_bytes: int | None = data.DEFAULT_MAX_TEXT_BYTES) -> HeldOut:  # fmt: skip
    """The text to score, over the model's ``vocab`` (a checkpoint's ``vocab`` and
    ``config``).

    Default: the validation split of the run's own text. ``text`` (a file) or ``corpus``
    (a built-in name) choose another; ``split`` is ``"validation"`` (the held-out tail,
    split by position as training splits it) or ``"all"``; its default is
    ``"validation"`` for the run's text and a corpus, ``"all"`` for a file. A file
    larger than ``max_bytes`` is refused before it is read.
    """
    if unknown not in UNKNOWN:
        raise ValueError(f"unknown: expected one of {list(UNKNOWN)}; got {unknown!r}")
    if text is not None and corpus is not None:
        raise ValueError("text, corpus: give one of them, not both")
    fraction = float(config.get("data", {}).get("val_fraction", 0.1)) if config else 0.1
    if text is not None:
        content, source, default = data.read_text(text, max_bytes=max_bytes), str(text), "all"
    elif corpus is not None:
        content, source, default = data.builtin_text(corpus), f"corpus:{corpus}", "validation"
    else:
        (content, source, fraction), default = run_text(config, max_bytes=max_bytes), "validation"
    split = default if split is None else split
    if split not in ("validation", "all"):
        raise ValueError(f"split: expected 'validation' or 'all'; got {split!r}")
    if split == "validation":
        _, content = data.split_ids(content, val_fraction=fraction)  # the tail, by position
        description = f"the validation split ({fraction:g}) of {source}"
    else:
        description = f"all of {source}"
    ids, removed = _encode(content, data.Vocab(vocab), source, unknown)
    if len(ids) < 2:
        raise data.DataError(f"text: {description} has {len(ids)} character(s) to score "
                             "from; need at least 2")  # fmt: skip
    return HeldOut(ids, description, removed)


def validation_score(model: Any, params: dict[str, Any], ids: np.ndarray, *, streams: int,
                     warmup: int, backend: Any, dtype: str) -> tuple[float, int]:  # fmt: skip
    """(bits per character, characters scored) of ``ids[1:]``, as the training loop's
    validation computes it (:func:`bptt.text.validation.evaluate`)."""
    with backend.activate():
        val = layout_validation(ids, streams=streams, warmup=warmup, backend=backend,
                                dtype=dtype)  # fmt: skip
        return evaluate(model, params, val), val.count
