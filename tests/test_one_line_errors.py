"""One line and exit 2, always: crafted checkpoints, output paths, bench options, memory
errors, Ctrl-C during start-up, and messages that say what they mean.

The crafted checkpoints are one table, each tried on ``train --resume``, ``sample`` and
``diagnose``: the same ``bptt CMD: error: checkpoint: 'FILE': FIELD: ...`` line on each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from train_helpers import SMALL_TEXT

from bptt import cli
from bptt.train import Trainer
from bptt.train.checkpoint import LATEST

TINY = ["--hidden", "8", "--batch", "4", "--seq-len", "16", "--eval-every", "2",
        "--no-progress", "--backend", "numpy"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("oneline")
    (root / "text.txt").write_text(SMALL_TEXT, encoding="utf-8")
    argv = ["train", "--text", str(root / "text.txt"), *TINY, "--steps", "4",
            "--checkpoint-dir", str(root / "run")]  # fmt: skip
    assert cli.main(argv) == 0
    return root


def _refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def _meta(change):
    def edit(arrays, meta):
        change(meta)

    return edit


def _array(name, make):
    def edit(arrays, meta):
        arrays[name] = make(arrays[name])

    return edit


def _drop(name):
    return lambda arrays, meta: arrays.pop(name)


def _set(path: str, value):
    """meta[a][b]... = value (``path`` "config.train.hidden"); a missing leaf is deleted."""

    def change(meta):
        *parents, leaf = path.split(".")
        node = meta
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value

    return _meta(change)


# (how the file is crafted, the field the message names, what it says)
CRAFTED = {
    "W of the wrong shape": (_array("param/W", lambda a: np.zeros((9, 9), a.dtype)), "param/W",
                             "expected shape (8, 8) from the configuration; the file declares"),
    "NaN in a parameter": (_array("param/V", lambda a: a * np.nan), "param/V", "contains NaN"),
    "NaN optimizer state": (_array("opt/1/1/mu/U", lambda a: a * np.nan), "opt/1/1/mu/U",
                            "contains NaN"),
    "a negative second moment": (_array("opt/1/1/nu/W", lambda a: a - 1), "opt/1/1/nu/W",
                                 "negative entries; nu is a sum or mean of squares"),
    "an update count of 2.5": (_array("opt/1/1/count", lambda a: a * 0 + 2.5), "opt/1/1/count",
                               "a whole number in [0, 4]"),
    "complex parameters": (_array("param/U", lambda a: a.astype(np.complex64)), "param/U",
                           "expected float32 (config.train.dtype); the file declares dtype "
                           "complex64"),
    "integer parameters": (_array("param/b", lambda a: a.astype(np.int64)), "param/b",
                           "the file declares dtype int64"),
    "a missing member": (_drop("hidden"), "hidden", "missing from the file"),
    "an extra member": (lambda arrays, meta: arrays.update(extra=np.zeros(2)), "extra",
                        "not a member of a bptt checkpoint"),
    "a 2-d history": (_array("history/val_bpc", lambda a: a.reshape(1, -1)), "history/val_bpc",
                      "expected a 1-d array"),
    "format version as text": (_array("format_version", lambda a: np.asarray("2")),
                               "format_version", "expected an integer; the file declares dtype"),
    "format version 2.0": (_array("format_version", lambda a: np.asarray(2.0)),
                           "format_version", "expected an integer"),
    "format version 0": (_array("format_version", lambda a: np.asarray(0)), "format_version",
                         "expected 1 to 3; got 0"),
    "format version of shape (2,)": (_array("format_version", lambda a: np.asarray([2, 2])),
                                     "format_version", "expected shape ()"),
    "a duplicated vocabulary": (_array("vocab", lambda a: np.asarray("a" + str(a)[1:])), "vocab",
                                "the characters must be distinct and sorted"),
    "a reordered vocabulary": (_array("vocab", lambda a: np.asarray(str(a)[::-1])), "vocab",
                               "the characters must be distinct and sorted"),
    "a short vocabulary": (_array("vocab", lambda a: np.asarray(str(a)[:-1])), "vocab",
                           "characters for config.model.input_size"),
    "a missing configuration key": (_set("config.train.seq_len", KeyError), "config.train",
                                    "missing key(s) ['seq_len']"),
    "a model option among the training options": (_set("config.train.hidden", 8),
                                                  "config.train", "unknown key(s) ['hidden']"),
    "an extra configuration key": (_set("config.train.attention", 3), "config.train",
                                   "unknown key(s) ['attention']"),
    "an extra model key": (_set("config.model.attention", True), "config.model",
                           "unknown key(s) ['attention']"),
    "layers of the wrong type": (_set("config.model.layers", "2"), "config.model.layers",
                                 "expected a positive integer"),
    "an unknown cell": (_set("config.model.cell", "sigmoid"), "config.model.cell",
                        "expected one of ['tanh', 'relu'"),
    "a two-direction model": (_set("config.model.bidirectional", True),
                              "config.model.bidirectional",
                              "expected False, as a training run builds it; got True"),
    "another head": (_set("config.model.head", "mse"), "config.model.head",
                     "expected 'softmax', as a training run builds it; got 'mse'"),
    "layers the parameters lack": (_set("config.model.layers", 2), "param/U_l1",
                                   "missing from the file"),
    "a gated cell the parameters lack": (_set("config.model.cell", "gru"), "param/b_hn",
                                         "missing from the file"),
    "a missing section": (_set("config.data", KeyError), "config", "missing key(s) ['data']"),
    "an extra meta key": (_set("extra", 1), "meta", "unknown key(s) ['extra']"),
    "a negative hidden size": (_set("config.model.hidden_size", -8),
                               "config.model.hidden_size", "expected a positive integer"),
    "a hidden size of another type": (_set("config.model.hidden_size", "8"),
                                      "config.model.hidden_size",
                                      "expected a positive integer; got '8'"),
    "a dtype other than the arrays'": (_set("config.train.dtype", "float64"), "param/U",
                                       "expected float64 (config.train.dtype); the file "
                                       "declares dtype float32"),
    "a learning rate of another type": (_set("config.train.lr", "fast"), "config.train.lr",
                                        "expected a positive learning rate; got 'fast'"),
    "a data position out of range": (_set("position.chunk", 10**6), "meta.position.chunk",
                                     "1000000 is out of range"),
    "an offset beyond the chunk": (_set("position.offset", 16), "meta.position.offset",
                                   "16 is out of range: expected [0, 16)"),
    "a negative epoch": (_set("position.epoch", -1), "meta.position.epoch", "an integer >= 0"),
    "a step of another type": (_set("step", "4"), "meta.step", "expected an integer >= 0"),
    "a best step after the step": (_set("best.best_step", 99), "meta.best.best_step",
                                   "null or a step in [0, 4]"),
    "a NaN best": (_set("best.best_val", float("nan")), "meta.best.best_val",
                   "a finite number or null"),
    "a broken generator state": (_set("rng_state", {"bit_generator": "PCG64"}),
                                 "meta.rng_state", "not a NumPy generator state"),
    "an unknown optimizer": (_set("config.train.optimizer", "lbfgs"), "config.train.optimizer",
                             "expected one of"),
    "a sha256 that is not one": (_set("config.data.sha256", "x"), "config.data.sha256",
                                 "64 hexadecimal digits"),
    "meta that is not an object": ("[1, 2]", "meta", "expected a JSON object; got list"),
    "meta nested 10^5 deep": ("[" * 100_000 + "]" * 100_000, "meta", "not a JSON document"),
}  # fmt: skip


def _craft(run: Path, tmp: Path, case: str) -> str:
    with np.load(run / "run" / LATEST, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    edit = CRAFTED[case][0]
    if isinstance(edit, str):  # the JSON document itself
        arrays["meta"] = np.asarray(edit, dtype=np.str_)
    else:
        edit(arrays, meta)
        arrays["meta"] = np.asarray(json.dumps(meta), dtype=np.str_)
    path = tmp / "crafted.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return str(path)


COMMANDS = {
    "train --resume": lambda path, run: ["train", "--resume", path, "--text",
                                         str(run / "text.txt"), *TINY, "--steps", "6"],
    "sample": lambda path, run: ["sample", path],
    "diagnose": lambda path, run: ["diagnose", path],
}  # fmt: skip


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(CRAFTED))
def test_every_crafted_checkpoint_is_one_line(run, tmp_path, capsys, case, command) -> None:
    path = _craft(run, tmp_path, case)
    _, field, message = CRAFTED[case]
    line = _refused(COMMANDS[command](path, run), capsys)
    assert line.startswith(f"bptt {command.split()[0]}: error: checkpoint: {path!r}: {field}"), line
    assert message in line, line


def test_the_good_checkpoint_passes_every_command(run, capsys) -> None:
    """The table's base file is fine: each case fails for its own change only."""
    path = str(run / "run" / LATEST)
    assert cli.main(["sample", path, "--length", "3"]) == 0
    assert cli.main(["diagnose", path, "--seq-len", "4", "--batch", "2"]) == 0
    argv = COMMANDS["train --resume"](path, run)
    assert cli.main([*argv, "--checkpoint-dir", str(run / "copy")]) == 0


# ---- output paths are checked before the work ------------------------------------------

PLOTS = {
    "no such folder": ("missing/x.png", "the folder 'DIR/missing' does not exist"),
    "a directory": (".", "exists and is not a regular file"),
    "an unknown format": ("x.xyz", "expected a file name ending in one of"),
    "a FIFO": ("fifo.png", "exists and is not a regular file"),
}


@pytest.mark.parametrize("command", ["train", "diagnose"])
@pytest.mark.parametrize("case", list(PLOTS))
def test_plot_paths_are_checked_before_training(run, tmp_path, capsys, case, command) -> None:
    name, message = PLOTS[case]
    if case == "a FIFO":
        if os.name != "posix":
            pytest.skip("FIFOs")
        os.mkfifo(tmp_path / name)
    plot = str(tmp_path / name) if name != "." else str(tmp_path)
    if command == "train":
        argv = ["train", "--text", str(run / "text.txt"), *TINY, "--steps", "2",
                "--checkpoint-dir", str(tmp_path / "ckpt"), "--plot", plot]  # fmt: skip
    else:
        argv = ["diagnose", "--init", "--seq-len", "4", "--plot", plot]
    line = _refused(argv, capsys)
    assert f"--plot {plot}: " in line and message.replace("DIR", str(tmp_path)) in line, line
    assert not (tmp_path / "ckpt").exists()  # nothing trained, nothing made


BENCH = [
    (["--reps", "0"], "argument --reps: expected a positive integer"),
    (["--pause", "-1"], "argument --pause: expected a number >= 0"),
    (["--min-block", "nan"], "argument --min-block"),
    (["--gemm-n", "0"], "argument --gemm-n"),
    (["--guard", "-0.5"], "argument --guard"),
    (["--sizes", "0x25x100x65x65"], "BxTxDxMxC of positive integers"),
    (["--sizes", "S9"], "size: expected one of"),
    (["--dtypes", "float16"], "--dtypes: expected a comma-separated list"),
    (["--torch-device", "gpu"], "--torch-device: expected auto, cpu, cuda, cuda:N or none"),
    (["--backend", "nope"], "backend"),
    (["--schedule", "fast"], "argument --schedule: invalid choice"),
    (["--json", "/no/such/dir/b.json"], "--json /no/such/dir/b.json: the folder"),
    (["--markdown", "/"], "--markdown /: exists and is not a regular file"),
]


@pytest.mark.parametrize(("argv", "message"), BENCH, ids=[" ".join(a) for a, _ in BENCH])
def test_bench_validates_every_option_before_timing(argv, message, capsys, monkeypatch) -> None:
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    import bench_step

    monkeypatch.setattr(bench_step, "run_benchmark", lambda *a, **k: pytest.fail("timed"))
    with pytest.raises(SystemExit) as info:
        bench_step.main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "error:" in line]
    assert info.value.code == 2 and len(lines) == 1 and message in lines[0], err
    assert out == ""


def test_bptt_bench_passes_the_refusal_on(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "bptt", "bench", "--reps", "0"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "argument --reps: expected a positive" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


# ---- memory errors, Ctrl-C, and what messages mean --------------------------------------


def test_a_memory_error_anywhere_is_one_line(run, monkeypatch, capsys) -> None:
    def allocate(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.28 TiB for an array with shape (1000000, 1000000)")

    monkeypatch.setattr(Trainer, "create", allocate)
    assert cli.main(["train", "--text", str(run / "text.txt"), *TINY, "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err == ("bptt train: error: out of memory: Unable to allocate 7.28 TiB for an array "
                   "with shape (1000000, 1000000); use smaller sizes\n")  # fmt: skip
    monkeypatch.setattr("bptt.text.sample.sample_ids", lambda *a, **k: (_ for _ in ()).throw(
        MemoryError()))  # fmt: skip
    assert cli.main(["sample", str(run / "run")]) == 2
    assert "bptt sample: error: out of memory: an allocation failed" in capsys.readouterr().err


def test_ctrl_c_during_start_up_is_130_without_a_traceback(run, monkeypatch, capsys) -> None:
    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("bptt.text.data.load_corpus", interrupted)
    ckpt = run / "startup"
    assert cli.main(["train", *TINY, "--checkpoint-dir", str(ckpt)]) == 130
    assert capsys.readouterr().err == "bptt train: interrupted\n"
    assert not ckpt.exists()


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_ctrl_c_at_any_moment_of_start_up(run, tmp_path) -> None:
    """A real SIGINT while the stdlib corpus loads or the model is built, or after."""
    argv = [sys.executable, "-m", "bptt", "train", "--corpus", "stdlib", *TINY, "--steps",
            "1000000"]  # fmt: skip
    for delay in (1.0, 2.5):  # importing, then loading the 4.7 MB corpus or building
        where = ["--checkpoint-dir", str(tmp_path / f"ckpt{delay}")]
        proc = subprocess.Popen([*argv, *where], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (delay, out, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, (delay, err)


MESSAGES = [
    (["--checkpoint-dir", "/proc"], "the directory exists but takes no new files"),
    (["--checkpoint-dir", "/dev/null/run"], "'/dev/null' is not a directory"),
    (["--text", "UTF16"], "is UTF-16 (little-endian), with a byte-order mark, not UTF-8"),
    (["--text", "UTF16LE"], "is UTF-16 (little-endian), not UTF-8; convert it, e.g. with iconv"),
    (["--text", "EMPTYDIR"], "is a directory; expected a UTF-8 text file"),
]


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="Linux /proc")
@pytest.mark.parametrize(("argv", "message"), MESSAGES, ids=[a[1] for a, _ in MESSAGES])
def test_messages_say_what_they_mean(run, tmp_path, capsys, argv, message) -> None:
    (tmp_path / "UTF16").write_bytes(SMALL_TEXT.encode("utf-16"))
    (tmp_path / "UTF16LE").write_bytes(SMALL_TEXT.encode("utf-16-le"))
    (tmp_path / "EMPTYDIR").mkdir()
    files = {n: str(tmp_path / n) for n in ("UTF16", "UTF16LE", "EMPTYDIR")}
    argv = [files.get(a, a) for a in argv]
    if "--text" not in argv:
        argv = ["--text", str(run / "text.txt"), *argv]
    line = _refused(["train", *TINY, "--steps", "2", *argv], capsys)
    assert message in line, line
    assert "No such file or directory" not in line.split("the system said")[0]


# ---- every flag a message names is one the command has, and its advice works -------------


def _options(command: str) -> set[str]:
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {o for a in sub.choices[command]._actions for o in a.option_strings}


# (command line, with RUN, TEXT, BIG (a sparse file over the default 1 GiB limit) and
#  MISSING standing for files; a fragment of the one error line; the command line that
#  follows its advice and must get past that error, or None)
ADVICE = [
    (["evaluate", "RUN", "--text", "BIG"], "raise the limit with --max-text-size", None),
    (["evaluate", "RUN", "--text", "TEXT", "--max-text-size", "1K"],
     "raise the limit with --max-text-size",
     ["evaluate", "RUN", "--text", "TEXT", "--max-text-size", "1M"]),
    (["evaluate", "RUN", "--max-text-size", "1K"], "raise the limit with --max-text-size",
     ["evaluate", "RUN", "--max-text-size", "1M"]),
    (["diagnose", "RUN", "--text", "BIG"], "raise the limit with --max-text-size", None),
    (["train", "--text", "BIG", *TINY], "raise the limit with --max-text-size", None),
    (["train", "--text", "TEXT", *TINY, "--device", "meta", "--backend", "torch"],
     "cannot compute on 'meta'", None),
    (["evaluate", "RUN", "--text", "MISSING"], "text:", None),
    (["train", "--resume", "RUN", *TINY, "--hidden", "9"], "hidden size (D) 8, but 9", None),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "fragment", "follow"), ADVICE,
                         ids=[" ".join(a[:3]) + f" ({f})" for a, f, _ in ADVICE])  # fmt: skip
def test_messages_name_flags_the_command_has_and_their_advice_works(
    run, tmp_path, capsys, argv, fragment, follow
) -> None:
    import re

    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate((1 << 30) + 1)  # sparse: no disk used, never read
    files = {"RUN": str(run / "run"), "TEXT": str(run / "text.txt"), "BIG": str(big),
             "MISSING": str(tmp_path / "missing.txt")}  # fmt: skip
    line = _refused([files.get(a, a) for a in argv], capsys)
    assert fragment in line, line
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
    assert named <= _options(argv[0]), (named - _options(argv[0]), line)
    if follow is not None:
        assert cli.main([files.get(a, a) for a in follow]) == 0
        capsys.readouterr()
