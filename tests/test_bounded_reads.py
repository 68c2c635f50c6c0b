"""Never read without a bound: only regular files, sizes checked before reading, memory
asked for checked before allocating.

Tables: what each command refuses to read (devices, FIFOs, directories, files over the
limit, a checkpoint whose stored text is a device), each within seconds and in one
line; checkpoint members that declare more than the configuration implies; sizes that
cannot fit in memory; and the memory a text costs while it is read and trained on.
"""

from __future__ import annotations

import io
import json
import os
import signal
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from train_helpers import SMALL_TEXT

from bptt import cli
from bptt.host import limits
from bptt.text import data
from bptt.train import checkpoint
from bptt.train.checkpoint import LATEST, CheckpointError, load_checkpoint

POSIX = pytest.mark.skipif(os.name != "posix", reason="FIFOs and /dev")
TINY = ["--hidden", "8", "--batch", "4", "--seq-len", "16", "--eval-every", "2",
        "--no-progress", "--backend", "numpy"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-step run on a text file: RUN/latest.npz, RUN/text.txt."""
    root = tmp_path_factory.mktemp("bounded")
    (root / "text.txt").write_text(SMALL_TEXT, encoding="utf-8")
    argv = ["train", "--text", str(root / "text.txt"), *TINY, "--steps", "2",
            "--checkpoint-dir", str(root)]  # fmt: skip
    assert cli.main(argv) == 0
    return root


@pytest.fixture
def deadline():
    """Fail instead of hanging: a test that blocks on a read gets SIGALRM after 20 s."""

    def expired(signum, frame):
        raise AssertionError("blocked reading: the read has no bound")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
    return err


def _with_source(run: Path, tmp: Path, source: str) -> str:
    """RUN/latest.npz with its stored text source changed to ``source``."""
    with np.load(run / LATEST, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["config"]["data"]["source"] = source
    arrays["meta"] = np.asarray(json.dumps(meta), dtype=np.str_)
    target = tmp / "sourced" / LATEST
    target.parent.mkdir()
    with open(target, "wb") as f:
        np.savez(f, **arrays)
    return str(target)


# (argv with FILE for the path to refuse, what the path is, the message)
REFUSED = [
    (["train", "--text", "FILE", *TINY], "/dev/zero", "is a character device; expected a UTF-8"),
    (["train", "--text", "FILE", *TINY], "fifo", "is a FIFO (named pipe)"),
    (["train", "--text", "FILE", *TINY], "dir", "is a directory"),
    (["train", "--text", "FILE", "--max-text-size", "1K", *TINY], "text",
     "is 5.9 KiB, more than the limit of 1.0 KiB; raise the limit with --max-text-size"),
    (["train", "--resume", "FILE", *TINY], "fifo", "checkpoint: 'FILE' is a FIFO"),
    (["train", "--resume", "FILE", *TINY], "/dev/zero", "checkpoint: 'FILE' is a character"),
    (["train", "--resume", "FILE", *TINY], "source:/dev/zero",
     "text: '/dev/zero' is a character device"),
    (["train", "--resume", "FILE", "--max-text-size", "1K", *TINY], "source:text",
     "more than the limit of 1.0 KiB"),
    (["sample", "FILE"], "fifo", "checkpoint: 'FILE' is a FIFO"),
    (["sample", "FILE"], "/dev/zero", "is a character device; only regular files are read"),
    (["diagnose", "FILE"], "fifo", "checkpoint: 'FILE' is a FIFO"),
    (["diagnose", "RUN", "--text", "FILE"], "fifo", "text: 'FILE' is a FIFO"),
    (["diagnose", "RUN", "--text", "FILE", "--max-text-size", "2K"], "text", "more than the limit"),
]  # fmt: skip


@POSIX
@pytest.mark.parametrize(("argv", "what", "message"), REFUSED,
                         ids=[f"{a[0]} {a[1]} {w}" for a, w, _ in REFUSED])  # fmt: skip
def test_only_regular_files_within_the_limit_are_read(
    run, tmp_path, capsys, deadline, argv, what, message
) -> None:
    paths = {"/dev/zero": "/dev/zero", "dir": str(tmp_path), "text": str(run / "text.txt")}
    if what == "fifo":
        os.mkfifo(tmp_path / "fifo")  # no writer: opening it for reading would block
        paths["fifo"] = str(tmp_path / "fifo")
    if what.startswith("source:"):
        source = paths[what.removeprefix("source:")]
        paths[what] = _with_source(run, tmp_path, source)
    path = paths[what]
    argv = [path if a == "FILE" else str(run) if a == "RUN" else a for a in argv]
    err = _refused(argv, capsys)
    assert message.replace("FILE", path) in err, err


def test_text_size_limit_is_checked_before_reading(tmp_path, monkeypatch) -> None:
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(3 << 30)  # 3 GiB, sparse: nothing of it may be read
    monkeypatch.setattr(os, "read", lambda *a: pytest.fail("read a byte of a refused file"))
    with pytest.raises(data.DataError, match=r"is 3\.0 GiB, more than the limit of 1\.0 GiB"):
        data.load_corpus(text=big)


# ---- checkpoint members that declare more than the configuration implies -----------------


def _npy(header: dict, payload: bytes = b"") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + payload


def _replace_member(source: Path, target: Path, name: str, raw: bytes | None,
                    compress: int = zipfile.ZIP_STORED) -> None:  # fmt: skip
    """``source`` with member ``name`` (+ .npy) replaced by ``raw`` bytes (None: removed;
    a new name: added)."""
    with zipfile.ZipFile(source) as z, zipfile.ZipFile(target, "w") as out:
        for info in z.infolist():
            if info.filename != name + ".npy":
                out.writestr(info, z.read(info))
        if raw is not None:
            out.writestr(zipfile.ZipInfo(name + ".npy"), raw, compress_type=compress)


M = len(set(SMALL_TEXT))  # the run's vocabulary
HUGE = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
MEMBERS = {
    "W declares 10^6 x 10^6": ("param/W", _npy(HUGE, b"\0" * 64), zipfile.ZIP_STORED,
                               "param/W: expected shape (8, 8) from the configuration; "
                               "the file declares (1000000, 1000000)"),
    "W declares 2 GiB of its shape": ("param/W", _npy({**HUGE, "shape": (8, 8)})
                                      + b"\0" * 16, zipfile.ZIP_STORED,
                                      "param/W: declares 256 bytes of data but the archive "
                                      "holds 16"),
    "meta declares 512 MiB": ("meta", _npy({"descr": "<U134217728", "fortran_order": False,
                                          "shape": ()}), zipfile.ZIP_STORED,
                            "meta: declares 512.0 MiB, more than the 16.0 MiB this field may hold"),
    "a deflated bomb as U": ("param/U", _npy({"descr": "<f4", "fortran_order": False,
                                              "shape": (8, M)}) + b"\0" * (50 << 20),
                             zipfile.ZIP_DEFLATED, f"declares {8 * M * 4} bytes of data but"),
    "an extra member": ("evil", _npy({"descr": "<f8", "fortran_order": False, "shape": (2,)},
                                     b"\0" * 16), zipfile.ZIP_STORED,
                        "evil: not a member of a bptt checkpoint of this configuration"),
    "a pickled member": ("hidden", _npy({"descr": "|O", "fortran_order": False, "shape": (4, 8)},
                                        b"\x80\x04N."), zipfile.ZIP_STORED,
                         "hidden: expected float32 (config.train.dtype); the file declares dtype "
                         "object"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MEMBERS))
def test_members_are_checked_before_they_are_read(run, tmp_path, case, monkeypatch) -> None:
    name, raw, compress, message = MEMBERS[case]
    bad = tmp_path / "bad.npz"
    _replace_member(run / LATEST, bad, name, raw, compress)
    assert bad.stat().st_size < (1 << 20)  # a small file
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message in str(info.value) and str(bad) in str(info.value), info.value
    assert peak < 8 << 20, f"read {peak} bytes to refuse it"


# ---- sizes that cannot fit are refused up front, with the memory they need ---------------

SIZES = [
    (["train", "--hidden", "1000000", *TINY[2:]], "a model of --hidden 1000000"),
    (["sample", "RUN", "--length", "1000000000"], "sampling 1,000,000,000 characters"),
    (["diagnose", "--init", "--seq-len", "100000"], "--seq-len 100000 (the T x T norms"),
    (["train", "--resume", "CRAFTED", *TINY[2:]], "config.model: its arrays (D = 1000000)"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "what"), SIZES, ids=[" ".join(a[:3]) for a, _ in SIZES])
def test_sizes_that_cannot_fit_are_refused_up_front(run, tmp_path, capsys, argv, what) -> None:
    crafted = tmp_path / "crafted.npz"
    with np.load(run / LATEST, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["config"]["model"]["hidden_size"] = 10**6
    arrays["meta"] = np.asarray(json.dumps(meta), dtype=np.str_)
    with open(crafted, "wb") as f:
        np.savez(f, **arrays)
    argv = [str(run) if a == "RUN" else str(crafted) if a == "CRAFTED" else a for a in argv]
    tracemalloc.start()
    try:
        err = _refused(argv, capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert what in err and "would need at least" in err and "more than the" in err, err
    assert peak < 64 << 20, f"allocated {peak} bytes before refusing"


def test_memory_plans_are_lower_bounds_that_fit_what_runs(monkeypatch) -> None:
    """The limit is the machine's: a plan a little over what is available is refused."""
    monkeypatch.setattr(limits, "available_memory", lambda backend=None: 1000)
    limits.require_memory(1000, "this")
    with pytest.raises(limits.TooLargeError, match=r"this would need at least 1001 bytes"):
        limits.require_memory(1001, "this")


def test_host_memory_is_known_here() -> None:
    found = limits.available_memory()
    assert found is None or 1 << 20 < found < 1 << 50


# ---- a text's memory: about a byte per character, read in blocks -------------------------


def test_a_text_costs_about_a_byte_per_character(tmp_path, monkeypatch) -> None:
    """Loading streams the file in blocks (two passes); the ids are uint8 for <= 256
    symbols. The earlier code held the text, its UTF-32 copy and int64 ids: ~27 bytes
    per character at the peak (measured by the issue)."""
    monkeypatch.setattr(data, "BLOCK_BYTES", 1 << 16)
    n = 2_000_000
    path = tmp_path / "t.txt"
    path.write_text((SMALL_TEXT * (n // len(SMALL_TEXT) + 1))[:n], encoding="utf-8")
    tracemalloc.start()
    try:
        corpus = data.load_corpus(text=path)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert corpus.train.dtype == np.uint8 and len(corpus.train) + len(corpus.val) == n
    assert held < 1.2 * n and peak < 2.0 * n, (held / n, peak / n)
    with open(path, encoding="utf-8") as f:  # the same ids as encoding the whole text
        whole = data.Corpus.from_text(f.read(), source="x")
    np.testing.assert_array_equal(corpus.train, whole.train)
    assert corpus.sha256 == whole.sha256 and corpus.vocab == whole.vocab


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (
            "naïve €".encode("utf-16"),
            "is UTF-16 (little-endian), with a byte-order mark, not UTF-8",
        ),
        ("naïve".encode("utf-16-be") * 100, "is UTF-16 (big-endian), not UTF-8"),
        ("plain".encode("utf-16-le") * 100, "is UTF-16 (little-endian), not UTF-8"),
        ("text".encode("utf-32"), "is UTF-32 (little-endian), with a byte-order mark"),
        ("text".encode("utf-32-be") * 50, "is UTF-32 (big-endian), not UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01", "looks binary"),
        (b"abc" * 10 + b"\xe2\x82", "invalid byte 0xe2 at offset 30"),  # cut mid-character
        (b"\xef\xbb\xbf", "is empty"),  # only a byte-order mark
    ],
)
def test_what_a_text_is_not_is_named(tmp_path, content: bytes, fragment: str) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(data.DataError, match=None) as info:
        data.load_corpus(text=path)
    assert fragment in str(info.value), info.value


def test_a_multibyte_character_across_blocks(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(data, "BLOCK_BYTES", 7)  # every block boundary cuts some character
    text = "é€😀 naïve ∑ " * 40
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    corpus = data.load_corpus(text=path)
    assert corpus.vocab.decode(np.concatenate([corpus.train, corpus.val])) == text
    assert corpus.sha256 == data.Corpus.from_text(text, source="x").sha256
    assert checkpoint.LATEST == "latest.npz"
