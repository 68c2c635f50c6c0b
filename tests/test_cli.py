"""The ``bptt`` command: train, resume, sample, gradcheck, info, and argparse errors."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import jax_x64
from train_helpers import SMALL_TEXT

from bptt import cli
from bptt.train.checkpoint import load_checkpoint

TINY = ["--hidden", "12", "--batch", "4", "--seq-len", "16", "--eval-every", "5",
        "--log-every", "5", "--sample-length", "10", "--no-progress"]  # fmt: skip


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return str(path)


BACKENDS = {
    "strict-device1": ["--backend", "array_api_strict", "--device", "device1"],
    "torch": ["--backend", "torch"],
    "jax": ["--backend", "jax"],  # the step under jax.jit (float32: x64 is off here)
}


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rmsprop", "adam"])
def test_train_resume_sample_on_a_device(text, tmp_path, capsys, backend, optimizer) -> None:
    if backend == "jax":
        pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    ckpt = tmp_path / "run"
    args = ["train", "--text", text, *TINY, *BACKENDS[backend], "--optimizer", optimizer,
            "--checkpoint-dir", str(ckpt), "--dropout", "0.1", "--clip", "1"]  # fmt: skip
    assert cli.main([*args, "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoints: {ckpt}" in out and "validation" in out and "best" in out
    assert cli.main(["train", "--text", text, "--resume", str(ckpt), "--steps", "10",
                     *BACKENDS[backend], "--no-progress"]) == 0  # fmt: skip
    assert "resuming at step 5" in capsys.readouterr().out
    assert load_checkpoint(ckpt).step == 10
    assert cli.main(["sample", str(ckpt), "--length", "30", "--prime", "if ",
                     "--temperature", "0.8", *BACKENDS[backend]]) == 0  # fmt: skip
    sampled = capsys.readouterr().out
    assert sampled.startswith("if ") and len(sampled.rstrip("\n")) >= 3


def test_cli_resume_continues_like_the_library(text, tmp_path) -> None:
    """Resuming through the command line is exact too (NumPy, float64)."""
    common = ["train", "--text", text, *TINY, "--backend", "numpy", "--dtype", "float64"]
    assert cli.main([*common, "--steps", "10", "--checkpoint-dir", str(tmp_path / "a")]) == 0
    assert cli.main([*common, "--steps", "5", "--checkpoint-dir", str(tmp_path / "b")]) == 0
    # No --text: a resumed run defaults to the text it was trained on.
    assert cli.main(["train", "--resume", str(tmp_path / "b"), "--steps", "10",
                     "--backend", "numpy", "--no-progress"]) == 0  # fmt: skip
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key])


def test_plot(text, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    args = ["train", "--text", text, *TINY, "--backend", "numpy", "--steps", "10",
            "--checkpoint-dir", str(tmp_path / "run"), "--plot", str(png)]  # fmt: skip
    assert cli.main(args) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nan_exits_1_naming_the_step(text, tmp_path, capsys) -> None:
    args = ["train", "--text", text, *TINY, "--backend", "numpy", "--lr", "1e36", "--clip", "0",
            "--steps", "20", "--checkpoint-dir", str(tmp_path)]  # fmt: skip
    assert cli.main(args) == 1
    assert "NaN or infinite at step" in capsys.readouterr().err
    assert not (tmp_path / "latest.npz").exists()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--hidden", "0"], "argument --hidden: expected a positive integer"),
        (["train", "--batch", "-3"], "argument --batch: expected a positive integer"),
        (["train", "--lr", "0"], "argument --lr: expected a positive number"),
        (["train", "--lr", "nan"], "argument --lr: expected a positive number"),
        (["train", "--dropout", "1"], r"argument --dropout: expected a probability in \[0, 1\)"),
        (["train", "--optimizer", "lbfgs"], "argument --optimizer: invalid choice"),
        (["train", "--text", "/no/such/file.txt"], "text: no such file"),
        (["train", "--backend", "nope"], "backend: expected one of"),
        (["train", "--backend", "numpy", "--device", "cuda:0"], "numpy runs on 'cpu' only"),
        (["sample", "/no/such.npz"], "checkpoint: no such file"),
        (["sample", "x.npz", "--temperature", "0"], "argument --temperature: expected a positive"),
        (["sample", "x.npz", "--temperature", "-1"], "argument --temperature"),
        (["gradcheck", "--backend", "array_api_strict", "--device", "no_float64"],
         "gradcheck needs float64"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_without_traceback(argv, fragment, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert pytest.importorskip("re").search(fragment, err), err


def test_text_too_short_and_wrong_size_resume(text, tmp_path, capsys) -> None:
    short = tmp_path / "short.txt"
    short.write_text("abc" * 50)
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--text", str(short), "--backend", "numpy"])
    assert info.value.code == 2 and "too short for --batch 64" in capsys.readouterr().err
    run = tmp_path / "run"
    assert cli.main(["train", "--text", text, *TINY, "--backend", "numpy", "--steps", "5",
                     "--checkpoint-dir", str(run)]) == 0  # fmt: skip
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--text", text, "--resume", str(run), "--hidden", "20"])
    assert info.value.code == 2
    assert "hidden size (D) 12, but 20 was asked" in capsys.readouterr().err


def _needs(backend: str) -> contextlib.AbstractContextManager:
    """JAX: skipped without it; gradcheck needs its x64 switch on (float64)."""
    if backend != "jax":
        return contextlib.nullcontext()
    pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    return jax_x64(True)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_gradcheck_command(backend, capsys) -> None:
    with _needs(backend):
        assert cli.main(["gradcheck", *BACKENDS[backend], "--h0"]) == 0
    out = capsys.readouterr().out
    assert "worst relative error" in out and "(ok," in out
    assert cli.main(["gradcheck", "--head", "sigmoid", "--dense", "--tol", "1e-30"]) == 1


def test_info(capsys) -> None:
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for fragment in (
        "bptt ",
        "numpy ",
        "usable",
        "array_api_strict",
        "BLAS:",
        "NumPy schedule: auto",
    ):
        assert fragment in out
    assert "cupy" in out  # usable or not, with the reason


def test_command_modules_import_nothing_heavy() -> None:
    code = (
        "import sys, bptt.cli; bptt.cli.build_parser(); "
        "heavy = [m for m in ('torch', 'cupy', 'matplotlib', 'tqdm', 'array_api_strict') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_dash_m(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "bptt", "--help"], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0
    for command in ("train", "sample", "gradcheck", "info"):
        assert command in result.stdout


def test_ctrl_c_saves_and_exits_130(text, tmp_path) -> None:
    import os
    import signal

    ckpt = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bptt", "train", "--text", text, *TINY, "--backend", "numpy",
         "--steps", "1000000", "--eval-every", "1000000", "--log-every", "1",
         "--checkpoint-dir", str(ckpt)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert "checkpoints:" in "".join(proc.stdout.readline() for _ in range(4))
    assert proc.stdout.readline().startswith("step 1: loss")  # training has begun
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: resume with" in out and "Traceback" not in err
    assert load_checkpoint(ckpt).step > 0


def test_info_says_how_a_numpy_step_is_scheduled(capsys, monkeypatch) -> None:
    from bptt.execution.numpy_exec import threads

    def line() -> str:
        assert cli.main(["info"]) == 0
        out = capsys.readouterr().out
        return next(x for x in out.splitlines() if x.startswith("NumPy schedule:"))

    monkeypatch.setenv("BPTT_SCHEDULE", "single")
    assert line() == "NumPy schedule: single (BPTT_SCHEDULE), 2 thread(s) (BPTT_THREADS)" or (
        "single (BPTT_SCHEDULE)" in line()
    )
    monkeypatch.setenv("BPTT_SCHEDULE", "auto")
    monkeypatch.setenv("BPTT_THREADS", "1")
    assert "always single here (one thread allowed)" in line()
    monkeypatch.setenv("BPTT_THREADS", "2")
    if threads.blas_controller() is not None:
        assert "split when B*D^2 >= 16,777,216 (float64: 4 x B*D^2) into parts of >= 32" in line()
        assert "overlapped when 1,048,576 <= B*D^2 < 67,108,864 and T >= 4" in line()
