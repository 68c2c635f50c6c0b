"""Chunked training holds memory for one chunk: the peak does not grow with the text.

tracemalloc sees NumPy's buffers. The trainer holds the text's ids (O(N), one byte
per character for up to 256 symbols, moved to the device once); what ``run``
allocates on top of that -- one chunk's states and gradients, one validation block
-- must be the same for a text ten times longer. ``benchmarks/memory.py`` measures
the same at 10^6 to 5 * 10^7 characters.
"""

from __future__ import annotations

import tracemalloc

from bptt import train
from bptt.text import data

CONFIG = dict(hidden=32, batch=8, seq_len=32, log_every=5, eval_every=1000, val_streams=4)


def _text(n: int) -> str:
    text = data.builtin_text("topics")
    return (text * (n // len(text) + 1))[:n]


def _memory(n_chars: int, steps: int = 12) -> tuple[int, int]:
    """(bytes held after building the trainer, peak bytes added while training)."""
    text = _text(n_chars)
    tracemalloc.start()
    try:
        corpus = data.Corpus.from_text(text, source=f"topics[:{n_chars}]")
        trainer = train.Trainer.create(corpus, train.TrainConfig(**CONFIG), backend="numpy")
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        trainer.run(steps=steps)  # steps, and a validation pass over the held-out 10%
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held, peak - held


def test_training_peak_does_not_grow_with_the_text() -> None:
    """10^5 against 10^6 characters: the data held differs by the ids (1 byte per
    character, uint8) and the validation layout (6 bytes per held-out character), about
    1.5 MB; the peaks may not differ.

    The peak of the same run varies by up to about 0.9 MB between repetitions
    (measured: 2.0-2.9 MB), hence the slack; holding anything of the text's size during
    training (int64 ids: 8 bytes per character; the validation text in one piece: 0.4 kB
    per character) adds more than 7 MB at 10^6 characters.
    """
    _memory(20_000, steps=2)  # warm up: imports and caches are not the training's
    short_held, short_peak = _memory(100_000)  # validation: two 256-step blocks already
    long_held, long_peak = _memory(1_000_000)
    grown = long_held - short_held
    assert 900_000 < grown < 2.5 * 900_000, grown  # really held, and ~1.5 bytes per character
    assert long_peak < 1.2 * short_peak + 1_000_000, (short_peak, long_peak)
