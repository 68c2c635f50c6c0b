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

import codecs
import hashlib
import os
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..host import limits
from ..host.limits import DEFAULT_MAX_TEXT_BYTES

__all__ = [
    "CORPORA",
    "Corpus",
    "DataError",
    "Streams",
    "Vocab",
    "builtin_text",
    "encode_file",
    "ids_dtype",
    "load_corpus",
    "read_text",
    "split_ids",
]

CORPORA = ("topics", "stdlib")


class DataError(ValueError):
    """A text that cannot be trained on: missing, empty, binary, not UTF-8, too short."""


BLOCK_BYTES = 1 << 20  # a text is read, decoded and encoded this many bytes at a time
_SNIFF_BYTES = 65536  # NUL bytes in this much of the start: binary, or UTF-16/32


def _not_utf8(head: bytes) -> str | None:
    """What a file starting with ``head`` is, when it is plainly UTF-16/32 or binary."""
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32 (little-endian)"),
                      (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)"),
                      (b"\xff\xfe", "UTF-16 (little-endian)"),
                      (b"\xfe\xff", "UTF-16 (big-endian)")):  # fmt: skip
        if head.startswith(bom):
            return f"{name}, with a byte-order mark"
    if b"\x00" not in head:
        return None
    n = len(head) - len(head) % 4
    nul = [head[i:n:4].count(0) / max(n // 4, 1) for i in range(4)]  # NUL share by position
    if min(nul[1:]) > 0.9 and nul[0] < 0.5:
        return "UTF-32 (little-endian)"
    if min(nul[:3]) > 0.9 and nul[3] < 0.5:
        return "UTF-32 (big-endian)"
    odd, even = (nul[1] + nul[3]) / 2, (nul[0] + nul[2]) / 2
    if odd > 0.7 and even < 0.3:
        return "UTF-16 (little-endian)"
    if even > 0.7 and odd < 0.3:
        return "UTF-16 (big-endian)"
    return "binary"


def _text_blocks(path: str | os.PathLike, max_bytes: int | None) -> Iterator[tuple[bytes, str]]:
    """(raw bytes, decoded text) of a UTF-8 file, block by block: the file's size is
    checked first (:func:`bptt.host.limits.open_regular`), a UTF-8 byte-order mark is
    dropped, and anything but UTF-8 text is a DataError naming what it is."""
    p = Path(path)
    try:
        with limits.open_regular(p, what="text", limit=max_bytes, flag="--max-text-size") as (
            f, size,
        ):  # fmt: skip
            if size == 0:
                raise DataError(f"text: {str(p)!r} is empty")
            decoder = codecs.getincrementaldecoder("utf-8")("strict")
            offset, first = 0, True
            while True:
                raw = f.read(BLOCK_BYTES)
                if first:
                    found = _not_utf8(raw[:_SNIFF_BYTES])
                    if found == "binary":
                        raise DataError(
                            f"text: {str(p)!r} looks binary (it contains NUL bytes); "
                            "expected a UTF-8 text"
                        )
                    if found is not None:
                        raise DataError(
                            f"text: {str(p)!r} is {found}, not UTF-8; convert it, e.g. with "
                            f"iconv -f {found.split()[0]} -t UTF-8"
                        )
                    if raw.startswith(codecs.BOM_UTF8):  # a byte-order mark is not text
                        raw, offset = raw[3:] or f.read(BLOCK_BYTES), 3
                        if not raw:
                            raise DataError(f"text: {str(p)!r} is empty")
                pending = decoder.getstate()[0]
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as e:
                    where = offset - len(pending) + e.start
                    byte = (pending + raw)[e.start]
                    raise DataError(
                        f"text: {str(p)!r} is not UTF-8 (invalid byte {byte:#04x} at offset "
                        f"{where}); convert it, e.g. with iconv -t UTF-8"
                    ) from None
                if not raw:
                    return
                yield raw, text
                offset, first = offset + len(raw), False
    except FileNotFoundError:
        raise DataError(f"text: no such file: {str(p)!r}") from None
    except limits.NotRegularFileError as e:
        raise DataError(
            str(e).replace("; only", "; expected a UTF-8 text file (only") + ")"
        ) from None
    except limits.TooLargeError as e:
        raise DataError(str(e)) from None
    except OSError as e:
        raise DataError(f"text: cannot read {str(p)!r}: {e.strerror or e}") from None


def read_text(path: str | os.PathLike, *, max_bytes: int | None = DEFAULT_MAX_TEXT_BYTES) -> str:
    """The contents of a UTF-8 text file, with a clear DataError for anything else.

    Only a regular file of at most ``max_bytes`` (None: no limit) is read; a
    FIFO, a device or a directory is refused before it is opened for reading.
    """
    return "".join(text for _, text in _text_blocks(path, max_bytes))


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


def ids_dtype(size: int) -> np.dtype:
    """The smallest integer dtype that holds ids in [0, size): uint8, int16 or int32."""
    for dtype in (np.uint8, np.int16, np.int32):
        if size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise DataError(f"vocabulary: {size} symbols do not fit in 32-bit ids")


@dataclass(frozen=True)
class Vocab:
    """The sorted distinct characters of a text; id i is ``chars[i]``."""

    chars: str

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))  # sorted: never a set's order

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def ids_dtype(self) -> np.dtype:
        """The dtype a text's ids are held in: :func:`ids_dtype` of the vocabulary's size."""
        return ids_dtype(len(self.chars))

    def _lookup(self, text: str) -> tuple[np.ndarray, bool]:
        """(ids (N,) int64, whether every character was found)."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (N,) code points
        table = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)  # sorted
        ids = np.searchsorted(table, points)  # (N,)
        found = ids < len(table)
        found[found] = table[ids[found]] == points[found]
        return ids, bool(found.all())

    def encode(self, text: str, *, name: str = "text") -> np.ndarray:
        """Characters to ids (N,) int64; a DataError names characters not in the vocabulary."""
        ids, ok = self._lookup(text)
        if not ok:
            unknown = sorted(set(text) - set(self.chars))
            raise DataError(
                f"{name}: character(s) {''.join(unknown)!r} are not in the model's "
                f"vocabulary of {len(self)}"
            )
        return ids.astype(np.int64)

    def encode_blocks(self, blocks: Iterable[str], n: int, *, name: str = "text") -> np.ndarray:
        """The ids (n,) of the text given as ``blocks``, in :attr:`ids_dtype`: a text's
        ids are held at 1 byte per character for up to 256 symbols, with only one
        block's temporaries (about 12 bytes per character of a block) on top."""
        out = np.empty(n, dtype=self.ids_dtype)  # (n,)
        pos = 0
        for block in blocks:
            if pos + len(block) > n:
                raise DataError(f"{name}: longer than the {n} characters first read")
            out[pos : pos + len(block)] = self.encode(block, name=name)
            pos += len(block)
        if pos != n:
            raise DataError(f"{name}: shorter than the {n} characters first read")
        return out

    def decode(self, ids: np.ndarray) -> str:
        """Ids (N,) to text."""
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


def split_ids(ids: np.ndarray, *, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the first (1 - f) of the ids and the tail, split by position."""
    _check_fraction(val_fraction)
    cut = round(len(ids) * (1.0 - val_fraction))
    return ids[:cut], ids[cut:]


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in (0, 1); got {val_fraction!r}")


TextBlocks = Callable[[], Iterator[tuple[bytes, str]]]  # (UTF-8 bytes, text), from the start


def _string_blocks(text: str) -> TextBlocks:
    step = BLOCK_BYTES
    return lambda: ((text[i : i + step].encode("utf-8"), text[i : i + step])
                    for i in range(0, len(text), step))  # fmt: skip


@dataclass(frozen=True)
class Corpus:
    """A text ready for training: vocabulary, train and validation ids, provenance.

    The ids are one array in :attr:`Vocab.ids_dtype` (uint8 for up to 256
    symbols); ``train`` and ``val`` are views of it. The training loop casts each
    chunk to the device's index dtype as it uses it.
    """

    vocab: Vocab
    train: np.ndarray  # (N_train,) ids, vocab.ids_dtype
    val: np.ndarray  # (N_val,) ids, vocab.ids_dtype
    source: str  # "corpus:topics", "corpus:stdlib" or the file's path
    sha256: str  # of the whole text, so a resume can tell it is the same data
    val_fraction: float = 0.1

    @classmethod
    def from_text(cls, text: str, *, source: str, val_fraction: float = 0.1) -> Corpus:
        if not text:
            raise DataError(f"text: {source} is empty")
        return cls._from_blocks(_string_blocks(text), source, val_fraction)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        val_fraction: float = 0.1,
        max_bytes: int | None = DEFAULT_MAX_TEXT_BYTES,
    ) -> Corpus:
        """The UTF-8 file ``path``, read in blocks twice (the vocabulary, then the ids):
        memory holds the ids and one block, never the text. Only a regular file of
        at most ``max_bytes`` is read (None: no limit)."""
        source = str(Path(path).resolve())  # absolute: a resume may run elsewhere
        return cls._from_blocks(lambda: _text_blocks(path, max_bytes), source, val_fraction)

    @classmethod
    def _from_blocks(cls, blocks: TextBlocks, source: str, val_fraction: float) -> Corpus:
        _check_fraction(val_fraction)
        chars: set[str] = set()
        n = 0
        for _, text in blocks():  # pass 1: the vocabulary and the length
            chars.update(text)
            n += len(text)
        if n == 0:
            raise DataError(f"text: {source} is empty")
        vocab = Vocab("".join(sorted(chars)))  # sorted: never a set's order
        digest = hashlib.sha256()

        def texts() -> Iterator[str]:  # pass 2: the ids, and the digest of what they encode
            for raw, text in blocks():
                digest.update(raw)
                yield text

        try:
            ids = vocab.encode_blocks(texts(), n, name=f"text: {source}")
        except DataError:
            raise DataError(f"text: {source} changed while it was being read") from None
        train, val = split_ids(ids, val_fraction=val_fraction)
        return cls(vocab, train, val, source, digest.hexdigest(), val_fraction)

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
    *,
    text: str | os.PathLike | None = None,
    corpus: str = "topics",
    val_fraction: float = 0.1,
    max_bytes: int | None = DEFAULT_MAX_TEXT_BYTES,
) -> Corpus:
    """The file ``text`` if given (at most ``max_bytes``; see :meth:`Corpus.from_file`),
    else the built-in ``corpus``."""
    if text is not None:
        return Corpus.from_file(text, val_fraction=val_fraction, max_bytes=max_bytes)
    return Corpus.from_text(
        builtin_text(corpus), source=f"corpus:{corpus}", val_fraction=val_fraction
    )


def encode_file(
    path: str | os.PathLike, vocab: Vocab, *, max_bytes: int | None = DEFAULT_MAX_TEXT_BYTES
) -> np.ndarray:
    """The ids of a UTF-8 file over ``vocab`` (:attr:`Vocab.ids_dtype`), read in blocks."""
    n = sum(len(text) for _, text in _text_blocks(path, max_bytes))
    blocks = (text for _, text in _text_blocks(path, max_bytes))
    return vocab.encode_blocks(blocks, n, name=str(path))


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
