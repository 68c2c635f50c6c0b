"""Small corpora and trainers for the training, checkpoint, sampling and CLI tests."""

from __future__ import annotations

from pydoc_data.topics import topics

from bptt import train
from bptt.text import data

# About 6k characters of the built-in text: big enough for B=4, T=16, fast to validate.
SMALL_TEXT = "".join(topics[k] for k in ("if", "for", "while", "try"))[:6000]


def small_corpus() -> data.Corpus:
    return data.Corpus.from_text(SMALL_TEXT, source="small")


def small_config(**overrides) -> train.TrainConfig:
    options = dict(
        hidden=12,
        batch=4,
        seq_len=16,
        log_every=3,
        eval_every=5,
        sample_length=8,
        val_streams=4,
        val_warmup=8,
        dtype="float64",
    )
    options.update(overrides)
    return train.TrainConfig(**options)


def small_trainer(be, tmp_path=None, **overrides) -> train.Trainer:
    config = small_config(**overrides)
    if not be.supports(config.dtype):
        config = small_config(**{**overrides, "dtype": "float32"})
    return train.Trainer.create(small_corpus(), config, backend=be, checkpoint_dir=tmp_path)
