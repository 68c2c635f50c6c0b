"""The command line refuses bad input argparse-style: one ``error:`` line, exit 2, no traceback.

Every numeric option of train, sample, gradcheck and diagnose is found by
walking the parsers, so an option added later with a bare ``int`` or ``float``
type (which would accept 0, -1 or nan) fails here.
"""

from __future__ import annotations

import argparse
import zipfile

import numpy as np
import pytest
from train_helpers import SMALL_TEXT

from bptt import backends, cli
from bptt.cli import _args
from bptt.train import checkpoint

COMMANDS = ("train", "sample", "gradcheck", "diagnose")
POSITIONAL = {"sample": ["x.npz"]}  # a required argument, so that parsing reaches the option

# Values each range-checked type must refuse.
BAD_VALUES = {
    _args.positive_int: ["0", "-3", "2.5", "many"],
    _args.nonneg_int: ["-1", "x"],
    _args.positive_float: ["0", "-1e-3", "nan", "inf", "x"],
    _args.nonneg_float: ["-1", "nan", "inf"],
    _args.probability: ["-0.1", "1", "1.5"],
    _args.fraction: ["0", "1"],
    _args.factor: ["0", "1.5", "-1"],
    _args.size: ["0", "-1", "2X", "big", "nan"],
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sub.choices[name] for name in COMMANDS}


def _numeric_options() -> list[tuple[str, str, object]]:
    found = []
    for command, parser in _subparsers().items():
        for action in parser._actions:
            if (
                action.option_strings
                and action.type is not None
                and action.type
                not in (
                    str,
                    _args.device_arg,
                )
            ):
                found.append((command, action.option_strings[-1], action.type))
    return found


NUMERIC = _numeric_options()


def test_every_numeric_option_is_range_checked() -> None:
    bare = [(c, o) for c, o, t in NUMERIC if t not in BAD_VALUES]
    assert not bare, f"options without a range-checked type: {bare}"
    assert len(NUMERIC) >= 35  # the walk really found the options


CASES = [
    pytest.param(command, option, value, id=f"{command} {option} {value}")
    for command, option, kind in NUMERIC
    if kind in BAD_VALUES
    for value in BAD_VALUES[kind]
]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
    return err


@pytest.mark.parametrize(("command", "option", "value"), CASES)
def test_out_of_range_numbers_exit_2(command, option, value, capsys) -> None:
    err = _refused([command, *POSITIONAL.get(command, []), f"{option}={value}"], capsys)
    assert f"argument {option}: " in err and repr(value) in err, err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A good checkpoint and text, and each way they can be bad."""
    root = tmp_path_factory.mktemp("files")
    text = root / "text.txt"
    text.write_text(SMALL_TEXT, encoding="utf-8")
    run = root / "run"
    assert cli.main(["train", "--text", str(text), "--hidden", "8", "--batch", "4",
                     "--seq-len", "16", "--steps", "2", "--eval-every", "2", "--no-progress",
                     "--backend", "numpy", "--checkpoint-dir", str(run)]) == 0  # fmt: skip
    good = run / checkpoint.LATEST
    raw = good.read_bytes()
    out = {"text": str(text), "run": str(run), "missing": str(root / "missing.npz")}
    (root / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (root / "not-npz.npz").write_bytes(b"GIF89a, not a checkpoint")
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("param/W.npy")
    flipped = bytearray(raw)
    flipped[info.header_offset + 30 + len(info.filename) + 150] ^= 0xFF
    (root / "corrupt.npz").write_bytes(bytes(flipped))
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["format_version"] = np.asarray(checkpoint.FORMAT_VERSION + 1)
    with open(root / "newer.npz", "wb") as f:
        np.savez(f, **arrays)
    for name in ("truncated", "not-npz", "corrupt", "newer"):
        out[name] = str(root / f"{name}.npz")
    for name, content in {
        "empty": b"",
        "latin1": "café ".encode("latin-1") * 400,
        "short": b"abcdef" * 40,
    }.items():
        (root / f"{name}.txt").write_bytes(content)
        out[name] = str(root / f"{name}.txt")
    return out


CHECKPOINT_ERRORS = {
    "missing": "checkpoint: no such file",
    "truncated": "is truncated (an incomplete .npz archive",
    "not-npz": "is not a bptt checkpoint (not an .npz archive)",
    "corrupt": "is corrupt (",
    "newer": "written by a newer bptt; this bptt reads versions up to 3",
}


def test_checkpoint_messages_are_distinct() -> None:
    fragments = list(CHECKPOINT_ERRORS.values())
    for i, a in enumerate(fragments):
        assert not any(a in b or b in a for b in fragments[i + 1 :]), a


@pytest.mark.parametrize("which", list(CHECKPOINT_ERRORS))
@pytest.mark.parametrize("command", ["sample", "diagnose", "train --resume"])
def test_bad_checkpoints_exit_2(files, command, which, capsys) -> None:
    argv = [*command.split(), files[which]]
    if command == "train --resume":
        argv += ["--text", files["text"], "--backend", "numpy"]
    err = _refused(argv, capsys)
    assert CHECKPOINT_ERRORS[which] in err and files[which] in err, err


def test_resume_with_another_model_size_exits_2(files, capsys) -> None:
    err = _refused(["train", "--resume", files["run"], "--hidden", "9"], capsys)
    assert "checkpoint: the model has hidden size (D) 8, but 9 was asked for" in err


TEXT_ERRORS = {
    "missing": ("/no/such/text.txt", "text: no such file: '/no/such/text.txt'"),
    "empty": (None, "is empty"),
    "latin1": (None, "is not UTF-8 (invalid byte 0xe9 at offset 3)"),
    "short": (None, "is too short for --batch 64 and --seq-len 100"),
}


@pytest.mark.parametrize("which", list(TEXT_ERRORS))
def test_bad_texts_exit_2(files, which, capsys) -> None:
    path, fragment = TEXT_ERRORS[which]
    err = _refused(["train", "--text", path or files[which], "--backend", "numpy"], capsys)
    assert fragment in err, err


NO_FLOAT64 = ["--backend", "array_api_strict", "--device", "no_float64"]
BACKEND_ERRORS = [
    (["train", "--backend", "nope"], "backend: expected one of"),
    (["train", "--backend", "array_api_strict", "--device", "device7"], "device"),
    (["train", "--dtype", "float64", *NO_FLOAT64], "dtype: float64 is not supported"),
    (["diagnose", "--init", "--dtype", "float64", *NO_FLOAT64], "float64 is not supported on"),
    (["gradcheck", *NO_FLOAT64], "gradcheck needs float64"),
    (["sample", "x.npz", "--backend", "torch", "--device", "tpu:9"], "device: not a torch device"),
]


@pytest.mark.parametrize(("argv", "fragment"), BACKEND_ERRORS)
def test_backend_and_dtype_errors_exit_2(files, argv, fragment, capsys) -> None:
    if argv[0] == "sample":
        argv = ["sample", files["run"], *argv[2:]]
    assert fragment in _refused(argv, capsys)


@pytest.mark.parametrize("command", ["train", "sample RUN", "gradcheck", "diagnose --init"])
def test_cupy_without_a_gpu_exits_2(files, command, capsys) -> None:
    if backends._cupy_status().usable:
        pytest.skip("cupy is usable here")
    argv = [files["run"] if word == "RUN" else word for word in command.split()]
    err = _refused([*argv, "--backend", "cupy"], capsys)
    assert "backend 'cupy' is not usable here: " in err and "Usable: ['numpy'" in err
