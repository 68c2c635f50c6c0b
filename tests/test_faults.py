"""Faults during training: SIGKILL mid-checkpoint, Ctrl-C / SIGTERM, a full disk, divergence.

Each test drives the real ``bptt train`` command (in a subprocess where a signal
must reach it) and checks what a user would find afterwards: a loadable
checkpoint, an exact resume, one clear line, and nothing left behind.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from train_helpers import SMALL_TEXT

from bptt import cli
from bptt.text.data import load_corpus
from bptt.train import TrainConfig, Trainer
from bptt.train.checkpoint import BEST, LATEST, load_checkpoint

# A checkpoint every step (eval-every 1), little validation work: most time goes to saving.
KILL_OPTIONS = dict(hidden=48, batch=4, seq_len=16, eval_every=1, log_every=1, sample_length=1)
TINY = ["--hidden", "12", "--batch", "4", "--seq-len", "16", "--eval-every", "5",
        "--log-every", "5", "--sample-length", "10", "--no-progress"]  # fmt: skip
POSIX_SIGNALS = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")


@pytest.fixture
def text(tmp_path) -> str:
    path = tmp_path / "text.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return str(path)


def _flags(options: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _temporaries(run: Path) -> set[str]:
    return {p.name for p in run.glob(".*.tmp")}


def _kill_many_times(text: str, run: Path, kills: int, seed: int) -> dict[int, dict]:
    """Start, SIGKILL, resume, SIGKILL, ...; the checkpoint found after each kill, by step.

    Odd kills come at a random moment; even ones a random 0-10 ms after a temporary
    checkpoint file appears, so that many land inside a write.
    """
    rng = random.Random(seed)
    base = [sys.executable, "-m", "bptt", "train", "--text", text, "--backend", "numpy",
            "--dtype", "float64", "--val-fraction", "0.03", "--steps", "1000000",
            "--no-progress", "--checkpoint-dir", str(run), *_flags(KILL_OPTIONS)]  # fmt: skip
    seen: dict[int, dict] = {}
    mid_write = 0  # kills that left a temporary file: they hit a checkpoint being written
    stale: set[str] = set()
    for i in range(kills):
        log = run.parent / f"log{i}.txt"
        with open(log, "w") as out:
            command = base if i == 0 else [*base, "--resume", str(run)]
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

        def started(log: Path = log, proc: subprocess.Popen = proc) -> bool:
            return "checkpoints:" in log.read_text() or proc.poll() is not None

        _wait_for(started, "start")
        assert proc.poll() is None, log.read_text()
        assert not stale & _temporaries(run), "a killed run's temporary file was not cleaned"
        if i == 0:
            _wait_for(lambda: (run / LATEST).exists(), "the first checkpoint")
        if i % 2:
            time.sleep(rng.uniform(0.0, 0.25))
        else:
            _wait_for(lambda s=stale: bool(_temporaries(run) - s), "a checkpoint being written")
            time.sleep(rng.uniform(0.0, 0.01))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stale = _temporaries(run)
        mid_write += bool(stale)
        ckpt = load_checkpoint(run)  # always loadable, whatever the moment of the kill
        if (run / BEST).exists():  # best.npz holds what latest.npz records, or is ahead of it
            best = load_checkpoint(run / BEST)  # (killed between the two writes)
            assert best.step >= ckpt.best["best_step"], (best.step, ckpt.best)
            if best.step == ckpt.best["best_step"]:
                assert best.best["best_val"] == ckpt.best["best_val"]
        seen[ckpt.step] = ckpt.params
    print(f"{kills} kills, {mid_write} inside a write; checkpoints at steps {sorted(seen)}")
    assert mid_write > 0, "no kill landed during a checkpoint write; the test proved nothing"
    return seen


def _check_against_uninterrupted(text: str, seen: dict[int, dict]) -> None:
    """Every checkpoint of the killed-and-resumed chain equals a straight run, bit for bit."""
    corpus = load_corpus(text=text, val_fraction=0.03)
    straight = Trainer.create(corpus, TrainConfig(dtype="float64", **KILL_OPTIONS))
    for step in sorted(seen):
        straight.run(steps=step)
        for key, value in seen[step].items():
            np.testing.assert_array_equal(value, straight.backend.to_numpy(straight.params[key]))


def _kill_test(text: str, tmp_path: Path, kills: int, seed: int) -> None:
    run = tmp_path / "run"
    seen = _kill_many_times(text, run, kills, seed)
    assert len(seen) > 1  # the chain made progress across kills
    _check_against_uninterrupted(text, seen)
    last = max(seen)
    args = ["train", "--resume", str(run), "--steps", str(last + 2), "--backend", "numpy",
            "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0  # a clean run after the kills: nothing left behind
    assert _temporaries(run) == set()
    final = load_checkpoint(run)
    assert final.step == last + 2
    assert load_checkpoint(run / BEST).step == final.best["best_step"]  # they agree


@POSIX_SIGNALS
def test_sigkill_while_checkpointing_loses_nothing(text, tmp_path) -> None:
    _kill_test(text, tmp_path, kills=20, seed=5)


@pytest.mark.slow
@POSIX_SIGNALS
def test_sigkill_while_checkpointing_loses_nothing_long(text, tmp_path) -> None:
    _kill_test(text, tmp_path, kills=60, seed=11)


def _start(text: str, run: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bptt", "train", "--text", text, *TINY, "--backend", "numpy",
         "--dtype", "float64", "--eval-every", "1000000", "--log-every", "1",
         "--checkpoint-dir", str(run), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stdout:
        if line.startswith("step 3:"):  # training has begun
            return proc
    raise AssertionError(proc.communicate())


@POSIX_SIGNALS
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_saves_says_one_line_and_resumes_exactly(text, tmp_path, sig) -> None:
    run = tmp_path / "run"
    proc = _start(text, run, "--steps", "1000000")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert err == ""  # no traceback, no warning
    last = out.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"interrupted: resume with  bptt train --resume {run}"), out
    step = load_checkpoint(run).step
    assert f"(step {step} saved in {run / LATEST})" in last
    common = ["train", "--text", text, *TINY, "--backend", "numpy", "--dtype", "float64"]
    assert cli.main([*common, "--resume", str(run), "--steps", str(step + 3)]) == 0
    assert cli.main([*common, "--checkpoint-dir", str(tmp_path / "ref"),
                     "--steps", str(step + 3)]) == 0  # fmt: skip
    resumed, straight = load_checkpoint(run), load_checkpoint(tmp_path / "ref")
    for key, value in straight.params.items():
        np.testing.assert_array_equal(resumed.params[key], value)


@POSIX_SIGNALS
def test_a_second_interrupt_stops_at_once_without_a_traceback(text, tmp_path) -> None:
    proc = _start(text, tmp_path / "run", "--steps", "1000000")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # during the final validation and save, or after
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130
    assert "Traceback" not in err and len(err.splitlines()) <= 1, err
    load_checkpoint(tmp_path / "run")  # the previous checkpoint, or the final one


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_is_reported_at_start(text, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(os, "fsync", _no_space)  # the start-up probe cannot be made durable
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--text", text, *TINY, "--backend", "numpy",
                  "--checkpoint-dir", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert "checkpoint-dir: cannot write to" in err and "No space left on device" in err
    assert "the disk is full or over quota" in err
    assert _temporaries(tmp_path / "run") == set()


@POSIX_SIGNALS
def test_too_little_space_for_the_checkpoints_is_reported_at_start(text, tmp_path) -> None:
    """A file-size limit below two checkpoints (a stand-in for a nearly full disk).

    The limit is set by the child before it execs ``bptt``, not by a ``preexec_fn``:
    that would run Python in a fork of this process, whose JAX threads may hold locks."""
    limited = (
        "import os, resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'bptt', *sys.argv[1:]])\n"
    )
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", limited, "train", "--text", text, "--hidden", "100", "--batch",
         "4", "--seq-len", "16", "--backend", "numpy", "--checkpoint-dir", str(run)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "checkpoint-dir: cannot write to" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "bptt train: backend" not in result.stdout
    assert not (run / LATEST).exists() and _temporaries(run) == set()


def test_unwritable_directory_is_reported_at_start(text, tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--text", text, *TINY, "--checkpoint-dir", str(blocker / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert f"checkpoint-dir: cannot write to {str(blocker / 'run')!r}" in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_directory_is_reported_at_start(text, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o500)
    try:
        with pytest.raises(SystemExit) as info:
            cli.main(["train", "--text", text, *TINY, "--checkpoint-dir", str(run)])
    finally:
        run.chmod(0o700)
    assert info.value.code == 2 and "Permission denied" in capsys.readouterr().err


def test_disk_filling_up_later_keeps_the_previous_checkpoint(
    text, tmp_path, monkeypatch, capsys
) -> None:
    run = tmp_path / "run"
    common = ["train", "--text", text, *TINY, "--backend", "numpy", "--dtype", "float64"]
    assert cli.main([*common, "--steps", "5", "--checkpoint-dir", str(run)]) == 0
    before = {name: (run / name).read_bytes() for name in (LATEST, BEST)}
    capsys.readouterr()

    def full(f, **arrays) -> None:  # half a file, then no space
        f.write(b"PK\x03\x04" + b"\0" * 1000)
        _no_space()

    monkeypatch.setattr(np, "savez", full)
    assert cli.main([*common, "--resume", str(run), "--steps", "10"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    name = BEST if "best.npz" in err else LATEST  # a new best is written first
    assert f"checkpoint: cannot write {str(run / name)!r} at step 10" in err
    assert f"No space left on device; the previous {name} is unchanged" in err
    assert {n: (run / n).read_bytes() for n in before} == before and _temporaries(run) == set()
    monkeypatch.undo()  # space freed: resume from the intact checkpoint
    assert cli.main([*common, "--resume", str(run), "--steps", "10"]) == 0
    assert load_checkpoint(run).step == 10


def test_divergence_names_the_step_and_a_lower_lr_resumes(text, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    common = ["train", "--text", text, *TINY, "--backend", "numpy"]
    assert cli.main([*common, "--steps", "5", "--checkpoint-dir", str(run)]) == 0
    good = (run / LATEST).read_bytes()
    capsys.readouterr()
    blown = [*common, "--resume", str(run), "--steps", "40", "--lr", "1e36", "--clip", "0"]
    assert cli.main(blown) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    found = __import__("re").search(r"became NaN or infinite at step (\d+);", err)
    assert found and 5 < int(found[1]) <= 40, err
    assert "this run wrote no checkpoint; the one it resumed from (step 5) is untouched" in err
    assert "Resume with a lower learning rate (--lr)" in err
    assert (run / LATEST).read_bytes() == good
    assert cli.main([*common, "--resume", str(run), "--steps", "15", "--lr", "1e-3"]) == 0
    assert "(resuming at step 5; lr 0.001 (was 0.002))" in capsys.readouterr().out
    ckpt = load_checkpoint(run)
    assert ckpt.step == 15 and ckpt.config["train"]["lr"] == 1e-3  # stored for later resumes
    assert all(np.isfinite(v).all() for v in ckpt.params.values())
    assert cli.main([*common, "--resume", str(run), "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "lr 0.001," in out and "(was" not in out


def test_overflow_in_the_last_update_is_caught_before_sampling(text, tmp_path, capsys) -> None:
    """The final step's update overflows: a NonFiniteError, not a ValueError from sampling."""
    args = ["train", "--text", text, *TINY, "--backend", "numpy", "--steps", "1",
            "--lr", "1e300", "--checkpoint-dir", str(tmp_path / "run")]  # fmt: skip
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "the parameters became NaN or infinite at step 1; no checkpoint was written" in err


# ---- the edges of a run: standard output and error, the plot, Ctrl-C while importing ----

DEV_FULL = Path("/dev/full")


def _output_fault(how: str, argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``python -m bptt ARGV`` with its output failing ``how``: "reader leaves" (it
    reads one line and goes away, as ``| head -1``), "closed pipe" (no reader at all),
    "stdout full" or "stderr full" (``> /dev/full``). Returns (status, standard error,
    or "" when that is full)."""
    cmd = [sys.executable, "-m", "bptt", *argv]
    if how == "reader leaves":
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        proc.stdout.readline()
        proc.stdout.close()
        return proc.wait(timeout=120), proc.stderr.read()
    if how == "closed pipe":
        read, write = os.pipe()
        os.close(read)
        done = subprocess.run(cmd, cwd=cwd, stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=120)  # fmt: skip
        os.close(write)
        return done.returncode, done.stderr
    with open(DEV_FULL, "w") as full:
        out = full if how == "stdout full" else subprocess.PIPE
        err = full if how == "stderr full" else subprocess.PIPE
        done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=err, text=True, timeout=120)
    return done.returncode, done.stderr or ""


# (command, how its output fails): every row ends with exit 1, no traceback, and (where
# standard error still works) one line naming the stream; train keeps its steps.
OUTPUT_FAULTS = [
    ("train", "reader leaves"), ("train", "closed pipe"), ("train", "stdout full"),
    ("train", "stderr full"),
    ("evaluate", "closed pipe"), ("evaluate", "stdout full"), ("sample", "stdout full"),
    ("info", "stdout full"), ("diagnose", "closed pipe"),
]  # fmt: skip


@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full")
@pytest.mark.parametrize(("command", "how"), OUTPUT_FAULTS,
                         ids=[f"{c}: {h}" for c, h in OUTPUT_FAULTS])  # fmt: skip
def test_output_that_fails_saves_the_run_and_says_one_line(text, tmp_path, command,
                                                           how) -> None:  # fmt: skip
    run = tmp_path / "run"
    if command != "train":  # a run to evaluate, sample or diagnose
        assert cli.main(["train", "--text", text, *TINY, "--steps", "5", "--checkpoint-dir",
                         str(run)]) == 0  # fmt: skip
    argv = {
        "train": ["train", "--text", text, *[a for a in TINY if a != "--no-progress"],
                  "--steps", "300", "--log-every", "1", "--checkpoint-dir", str(run)],
        "evaluate": ["evaluate", str(run), "--dynamic", "--rule", "sgd", "--lr", "1e-3",
                     "--tune-chars", "0"],
        "sample": ["sample", str(run), "--length", "2000"],
        "info": ["info"],
        "diagnose": ["diagnose", str(run), "--spectral-radius", "0.5", "1", "2"],
    }[command]  # fmt: skip
    status, err = _output_fault(how, argv, tmp_path)
    assert status == 1, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    if how != "stderr full":
        lines = [line for line in err.splitlines() if line.startswith("bptt")]
        stream = "standard output" if how != "stderr full" else "standard error"
        assert len(lines) == 1 and f"bptt {command}: error: {stream}: " in lines[0], err
    if command == "train":  # stopped as Ctrl-C stops: the steps since the last log kept
        step = load_checkpoint(run).step
        assert step < 300
        if how != "stderr full":
            assert f"at step {step}; step {step} saved in {run / LATEST}" in err, err


def test_a_plot_whose_directory_went_away_is_one_line_after_the_run(
    text, tmp_path, capsys, monkeypatch
) -> None:
    import shutil

    plots = tmp_path / "plots"
    plots.mkdir()
    real = Trainer.run

    def run_then_remove(self, **kwargs):
        result = real(self, **kwargs)
        shutil.rmtree(plots)  # during the run, after the last checkpoint
        return result

    monkeypatch.setattr(Trainer, "run", run_then_remove)
    argv = ["train", "--text", text, *TINY, "--steps", "5", "--checkpoint-dir",
            str(tmp_path / "run"), "--plot", str(plots / "curves.png")]  # fmt: skip
    pytest.importorskip("matplotlib")
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bptt train: error: --plot: cannot write" in err, err
    assert load_checkpoint(tmp_path / "run").step == 5


@POSIX_SIGNALS
@pytest.mark.parametrize("after", ["bptt._startup", "numpy", "bptt.api.calls", "bptt.cli"])
def test_ctrl_c_while_the_command_imports_is_130_and_one_line(tmp_path, after) -> None:
    """SIGINT sent the moment a given module has been imported (``-X importtime``
    reports each as it completes): NumPy and bptt importing, then the command line."""
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "bptt", "info"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    for line in proc.stderr:
        if line.split("|")[-1].strip() == after:
            proc.send_signal(signal.SIGINT)
            break
    else:
        raise AssertionError(f"{after} was never imported")
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    ours = [line for line in rest.splitlines() if not line.startswith("import time:")]
    assert "Traceback" not in rest and len(ours) == 1 and ours[0].endswith(": interrupted"), rest


def test_a_diagnose_plot_whose_directory_went_away_is_one_line(text, tmp_path, capsys,
                                                              monkeypatch) -> None:  # fmt: skip
    import shutil

    from bptt.cli import diagnose

    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    plots.mkdir()
    real = diagnose.measure

    def measure_then_remove(*args, **kwargs):
        shutil.rmtree(plots, ignore_errors=True)  # while measuring, after the checks
        return real(*args, **kwargs)

    monkeypatch.setattr(diagnose, "measure", measure_then_remove)
    with pytest.raises(SystemExit) as info:
        cli.main(["diagnose", "--init", "--plot", str(plots / "flow.png")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert info.value.code == 2 and "Traceback" not in err
    assert len(lines) == 1 and "--plot: cannot write" in lines[0], err
