"""Text loading, vocabulary, split and streams: contents, order and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from bptt.text import data


def _write(tmp_path, content: bytes, name: str = "t.txt"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_vocab_is_sorted_and_round_trips() -> None:
    text = "hello, world\nzebra naïve €"
    vocab = data.Vocab.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert vocab.decode(ids) == text


def test_encode_names_unknown_characters() -> None:
    with pytest.raises(data.DataError, match=r"prime: character\(s\) 'qx'"):
        data.Vocab("abc").encode("aqxb", name="prime")


def test_split_is_by_position() -> None:
    ids = np.arange(1000)
    train, val = data.split_ids(ids, val_fraction=0.1)
    np.testing.assert_array_equal(train, np.arange(900))
    np.testing.assert_array_equal(val, np.arange(900, 1000))


def test_builtin_default_is_pydoc_topics() -> None:
    from pydoc_data.topics import topics

    text = data.builtin_text()
    assert text.startswith(topics[sorted(topics)[0]])
    assert len(text) > 100_000
    corpus = data.load_corpus()
    assert corpus.source == "corpus:topics"
    assert len(corpus.val) == pytest.approx(0.1 * len(text), abs=1)


def test_builtin_stdlib_is_sorted_sources() -> None:
    import sysconfig
    from pathlib import Path

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    text = data.builtin_text("stdlib")
    first = files[0].read_text(encoding="utf-8")
    assert text.startswith(first)
    assert len(text) > 10 * len(first)
    with pytest.raises(data.DataError, match="corpus: expected one of"):
        data.builtin_text("nope")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty"),
        (b"abc\x00\x01\x02def", "looks binary"),
        (b"caf\xe9 latin-1", r"is not UTF-8 \(invalid byte 0xe9 at offset 3\)"),
    ],
)
def test_bad_files(tmp_path, content: bytes, fragment: str) -> None:
    with pytest.raises(data.DataError, match=fragment):
        data.read_text(_write(tmp_path, content))


def test_missing_file_and_directory(tmp_path) -> None:
    with pytest.raises(data.DataError, match="no such file"):
        data.load_corpus(text=tmp_path / "missing.txt")
    with pytest.raises(data.DataError, match="is a directory"):
        data.read_text(tmp_path)


def test_utf8_with_bom(tmp_path) -> None:
    path = _write(tmp_path, "\ufeffnaïve".encode())
    assert data.read_text(path) == "naïve"


def test_too_short_for_batch_and_seq_len(tmp_path) -> None:
    corpus = data.load_corpus(text=_write(tmp_path, b"abcdefghij" * 30))  # 270 train chars
    corpus.check_fits(batch=4, seq_len=10)
    with pytest.raises(data.DataError, match=r"too short for --batch 64 and --seq-len 10"):
        corpus.check_fits(batch=64, seq_len=10)


def test_streams_walk_contiguous_text() -> None:
    ids = np.arange(1000)
    s = data.Streams(len(ids), batch=4, seq_len=10)
    L = s.stream_length
    assert L == (1000 - 1 - 10) // 4 and s.chunks == (L - 1) // 10
    E = s.epoch_matrix(ids, offset=3)  # (chunks*T + 1, B)
    assert E.shape == (s.chunks * 10 + 1, 4)
    for b in range(4):  # each column is a contiguous piece, starting at offset + b*L
        np.testing.assert_array_equal(E[:, b], np.arange(3 + b * L, 3 + b * L + E.shape[0]))
    _, stop = s.epoch_slice(9)  # the largest offset stays inside the data
    assert stop <= len(ids) - 1


def test_too_short_for_validation(tmp_path) -> None:
    corpus = data.load_corpus(text=_write(tmp_path, b"abcdefghij" * 30), val_fraction=0.004)
    with pytest.raises(data.DataError, match=r"leaves 1 character\(s\) for validation"):
        corpus.check_fits(batch=4, seq_len=10)
