"""Text data for character-level training: loading, vocabulary, split, streams.

A text becomes integer ids over its sorted set of characters. The ids are split
90/10 by position (the held-out tail validates), and the training part is cut
into B parallel streams that the training loop walks T characters at a time
(see :class:`Streams`). Everything here is host-side NumPy; the training loop
moves the ids to the device once.

Built-in texts, so that training needs no download:

- ``"topics"`` (the default): the text of Python's reference manual that every
  CPython ships as ``pydoc_data.topics`` (about 465k characters, about 100 distinct);
- ``"stdlib"``: the sources of the standard library's top-level modules, in
  sorted file order (about 4.7 MB).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CORPORA",
    "Corpus",
    "DataError",
    "Streams",
    "Vocab",
    "builtin_text",
    "load_corpus",
    "read_text",
    "split_ids",
]

CORPORA = ("topics", "stdlib")


class DataError(ValueError):
    """A text that cannot be trained on: missing, empty, binary, not UTF-8, too short."""


def read_text(path: str | os.PathLike) -> str:
    """The contents of a UTF-8 text file, with a clear DataError for anything else."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"text: no such file: {str(p)!r}")
    if p.is_dir():
        raise DataError(f"text: {str(p)!r} is a directory; expected a UTF-8 text file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"text: cannot read {str(p)!r}: {e.strerror or e}") from None
    if not raw:
        raise DataError(f"text: {str(p)!r} is empty")
    if b"\x00" in raw[:65536]:
        raise DataError(f"text: {str(p)!r} looks binary (it contains NUL bytes); expected text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"text: {str(p)!r} is not UTF-8 (invalid byte {raw[e.start]:#04x} at offset "
            f"{e.start}); convert it, e.g. with iconv -t UTF-8"
        ) from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not text


def _stdlib_text() -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise DataError(f"corpus: no standard-library sources found in {str(root)!r}")
    parts = []
    for f in files:
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue  # a module that is unreadable here is simply left out
    return "".join(parts)


def builtin_text(name: str = "topics") -> str:
    """One of the built-in texts (see the module docstring)."""
    if name == "topics":
        from pydoc_data.topics import topics

        return "".join(topics[key] for key in sorted(topics))
    if name == "stdlib":
        return _stdlib_text()
    raise DataError(f"corpus: expected one of {list(CORPORA)}; got {name!r}")


@dataclass(frozen=True)
class Vocab:
    """The sorted distinct characters of a text; id i is ``chars[i]``."""

    chars: str

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))  # sorted: never a set's order

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str, *, name: str = "text") -> np.ndarray:
        """Characters to ids (N,) int64; a DataError names characters not in the vocabulary."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (N,) code points
        table = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)  # sorted
        ids = np.searchsorted(table, points)  # (N,)
        found = ids < len(table)
        found[found] = table[ids[found]] == points[found]
        if not found.all():
            unknown = sorted(set(text) - set(self.chars))
            raise DataError(
                f"{name}: character(s) {''.join(unknown)!r} are not in the model's "
                f"vocabulary of {len(self)}"
            )
        return ids.astype(np.int64)

    def decode(self, ids: np.ndarray) -> str:
        """Ids (N,) to text."""
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


def split_ids(ids: np.ndarray, *, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the first (1 - f) of the ids and the tail, split by position."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in (0, 1); got {val_fraction!r}")
    cut = round(len(ids) * (1.0 - val_fraction))
    return ids[:cut], ids[cut:]


@dataclass(frozen=True)
class Corpus:
    """A text ready for training: vocabulary, train and validation ids, provenance."""

    vocab: Vocab
    train: np.ndarray  # (N_train,) int64
    val: np.ndarray  # (N_val,) int64
    source: str  # "corpus:topics", "corpus:stdlib" or the file's path
    sha256: str  # of the whole text, so a resume can tell it is the same data
    val_fraction: float = 0.1

    @classmethod
    def from_text(cls, text: str, *, source: str, val_fraction: float = 0.1) -> Corpus:
        if not text:
            raise DataError(f"text: {source} is empty")
        vocab = Vocab.from_text(text)
        train, val = split_ids(vocab.encode(text), val_fraction=val_fraction)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return cls(vocab, train, val, source, digest, val_fraction)

    def check_fits(self, *, batch: int, seq_len: int) -> None:
        """DataError unless training has one chunk per stream and validation 2+ characters."""
        need = Streams.min_length(batch=batch, seq_len=seq_len)
        if len(self.train) < need:
            raise DataError(
                f"text: {self.source} is too short for --batch {batch} and --seq-len {seq_len}: "
                f"its training part has {len(self.train)} characters but needs at least {need} "
                "((batch + 1) * seq_len + 1); use a longer text or smaller --batch/--seq-len"
            )
        if len(self.val) < 2:
            raise DataError(
                f"text: {self.source} leaves {len(self.val)} character(s) for validation; "
                "need at least 2"
            )


def load_corpus(
    *, text: str | os.PathLike | None = None, corpus: str = "topics", val_fraction: float = 0.1
) -> Corpus:
    """The file ``text`` if given, else the built-in ``corpus``."""
    if text is not None:
        source = str(Path(text).resolve())  # absolute: a resume may run elsewhere
        return Corpus.from_text(read_text(text), source=source, val_fraction=val_fraction)
    return Corpus.from_text(
        builtin_text(corpus), source=f"corpus:{corpus}", val_fraction=val_fraction
    )


@dataclass(frozen=True)
class Streams:
    """B parallel streams over the training ids, walked T characters per step.

    Each epoch (one pass over the data) starts at an ``offset`` in [0, T), drawn
    by the training loop from its seeded generator, so chunk boundaries move
    between epochs. Stream b is ``ids[offset + b*L : offset + (b+1)*L]`` with
    L = (N - 1 - T) // B; chunk k of every stream covers its characters
    [k*T, (k+1)*T) as inputs and the next character of each as targets, for
    k < ``chunks`` = (L - 1) // T. The hidden state is carried from chunk k to
    k+1 of the same stream and reset at the start of each epoch.
    """

    n: int  # number of training ids
    batch: int  # B
    seq_len: int  # T

    @staticmethod
    def min_length(*, batch: int, seq_len: int) -> int:
        return (batch + 1) * seq_len + 1

    @property
    def stream_length(self) -> int:  # L
        return (self.n - 1 - self.seq_len) // self.batch

    @property
    def chunks(self) -> int:  # chunks per epoch
        return (self.stream_length - 1) // self.seq_len

    def epoch_slice(self, offset: int) -> tuple[int, int]:
        """(start, stop) in the ids of the B*L characters that epoch's streams cover."""
        return offset, offset + self.batch * self.stream_length

    def epoch_matrix(self, ids: np.ndarray, offset: int) -> np.ndarray:
        """Host version of what the loop builds on the device: (chunks*T + 1, B), time-major."""
        start, stop = self.epoch_slice(offset)
        L, used = self.stream_length, self.chunks * self.seq_len + 1
        return ids[start:stop].reshape(self.batch, L)[:, :used].T
