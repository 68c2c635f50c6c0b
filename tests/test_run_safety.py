"""Never lose a run: what a run directory holds is never replaced or mixed by accident.

One table of command sequences (a run, then what a careless user does next), each
with the exit status, the message and what must be left on disk; the lock (two
writers, stale locks, the fallback without flock); unique directory names; and
latest.npz and best.npz agreeing after every failure between their two writes.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import SMALL_TEXT

from bptt import cli
from bptt.train import checkpoint, rundir
from bptt.train.checkpoint import BEST, LATEST, load_checkpoint, peek_meta

TINY = ["--hidden", "8", "--batch", "4", "--seq-len", "16", "--eval-every", "5",
        "--log-every", "5", "--sample-length", "4", "--no-progress", "--backend", "numpy",
        "--dtype", "float64"]  # fmt: skip
POSIX = pytest.mark.skipif(os.name != "posix", reason="POSIX locks and signals")


@pytest.fixture
def text(tmp_path) -> str:
    path = tmp_path / "text.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return str(path)


def _train(text: str, *args: str) -> int:
    data = [] if "--text" in args or "--corpus" in args else ["--text", text]
    return cli.main(["train", *data, *TINY, *args])


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.glob("*.npz")}


def _agree(run: Path) -> None:
    """latest.npz's best record is what best.npz holds (the step and the value)."""
    latest, best = peek_meta(run / LATEST), peek_meta(run / BEST)
    assert best is not None and latest["best"]["best_step"] == best["step"]
    assert latest["best"]["best_val"] == best["best"]["best_val"]


def _new_dirs(root: Path) -> list[Path]:
    return sorted((root / "checkpoints").iterdir()) if (root / "checkpoints").exists() else []


# (name, argv after the first run's 10 steps in RUN, exit status, fragments of the output,
#  what RUN must still hold: "same" (untouched), "new" (replaced), "continued")
CASES = [
    ("new run on a run's directory", ["--checkpoint-dir", "RUN", "--steps", "5"], 2,
     ["already holds a run (latest.npz at step 10, best.npz at step 10)",
      "bptt train --resume RUN", "--overwrite replaces it"], "same"),
    ("new run with --overwrite", ["--checkpoint-dir", "RUN", "--steps", "5", "--seed", "3",
                                  "--overwrite"], 0, ["replaced the run in RUN"], "new"),
    ("resume the run's latest", ["--resume", "RUN", "--steps", "15"], 0,
     ["(resuming at step 10)"], "continued"),
    ("resume best.npz", ["--resume", "RUN/best.npz", "--steps", "15"], 0,
     ["continuing RUN/best.npz (step 10) in checkpoints/", "RUN is left as it is"], "same"),
    ("resume best.npz into its own run", ["--resume", "RUN/best.npz", "--checkpoint-dir", "RUN",
                                          "--steps", "15"], 2,
     ["would replace that run's latest.npz", "the steps after step 10", "--overwrite"], "same"),
    ("resume best.npz into another run", ["--resume", "RUN/best.npz", "--checkpoint-dir",
                                          "OTHER", "--steps", "15"], 2,
     ["--checkpoint-dir OTHER: it already holds a run"], "same"),
    ("resume with another --val-fraction", ["--resume", "RUN", "--val-fraction", "0.2",
                                            "--steps", "15"], 2,
     ["--val-fraction 0.2: the run validates on its last 0.1"], "same"),
    ("resume on another text", ["--resume", "RUN", "--text", "OTHER_TEXT", "--steps", "15"], 2,
     ["whose contents differ", "resume on the same text"], "same"),
    ("resume on a built-in corpus", ["--resume", "RUN", "--corpus", "topics", "--steps", "15"],
     2, ["resume on the same text"], "same"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "status", "fragments", "left"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_a_run_is_never_replaced_by_accident(
    text, tmp_path, monkeypatch, capsys, argv, status, fragments, left
) -> None:
    monkeypatch.chdir(tmp_path)  # default directories go to tmp_path/checkpoints
    run, other = Path("RUN"), Path("OTHER")
    assert _train(text, "--checkpoint-dir", str(run), "--steps", "10") == 0
    assert _train(text, "--checkpoint-dir", str(other), "--steps", "5") == 0
    Path("OTHER_TEXT").write_text(SMALL_TEXT[::-1])
    before, capsys_before = _snapshot(run), capsys.readouterr()
    assert capsys_before.err == ""
    try:
        got = _train(text, *argv)
    except SystemExit as e:
        got = e.code
    out = capsys.readouterr()
    assert got == status, out
    shown = out.out + out.err
    for fragment in fragments:
        assert fragment in shown, shown
    if status == 2:
        assert len(out.err.strip().splitlines()[-1:]) == 1 and "Traceback" not in out.err
        assert [ln for ln in out.err.splitlines() if "error:" in ln] != []
    after = _snapshot(run)
    if left == "same":
        assert after == before
    elif left == "new":
        assert after != before and load_checkpoint(run).step == 5
    else:
        assert load_checkpoint(run).step == 15
    if "best.npz" in argv[1] and status == 0:  # continued in a new, complete directory
        (new,) = _new_dirs(tmp_path)
        assert load_checkpoint(new).step == 15
        _agree(new)
    for directory in (run, *([] if status else _new_dirs(tmp_path))):
        _agree(directory)
    assert not list(run.glob(".*.tmp"))


def test_the_default_directory_is_unique_within_a_second(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    made = [rundir.new_run_directory(tmp_path / "checkpoints") for _ in range(3)]
    assert [p.name for p in made] == ["20260101-000000", "20260101-000000-2", "20260101-000000-3"]
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)


# ---- the lock ----------------------------------------------------------------------

HOLD = """
import sys, time
from bptt.train.rundir import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


@POSIX
def test_a_locked_directory_is_refused_and_a_dead_holders_lock_is_not(text, tmp_path, capsys):
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        with pytest.raises(SystemExit) as info:
            _train(text, "--checkpoint-dir", str(run), "--steps", "2")
        err = capsys.readouterr().err
        assert info.value.code == 2
        assert f"is in use by another run (process {proc.pid}, started " in err, err
        with pytest.raises(checkpoint.CheckpointError, match="in use by another run"):
            rundir.RunLock(run).acquire()  # the library's lock too
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _train(text, "--checkpoint-dir", str(run), "--steps", "2") == 0  # the kernel freed it
    rundir.RunLock(run).acquire().release()  # and the run released it when it ended


@POSIX
def test_without_flock_a_stale_lock_file_is_taken_over(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rundir, "fcntl", None)  # as on Windows or a filesystem without flock
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.LOCK_NAME).write_text(f'{{"pid": {dead}, "started": "then"}}')
    lock = rundir.RunLock(run).acquire()  # its process is gone: taken over
    with pytest.raises(checkpoint.CheckpointError, match=f"process {os.getpid()}"):
        rundir.RunLock(run).acquire()  # a live holder (this process)
    lock.release()
    assert not (run / rundir.LOCK_NAME).exists()
    rundir.RunLock(run).acquire().release()


@POSIX
def test_two_runs_started_at_once_on_one_directory(text, tmp_path) -> None:
    """Exactly one runs; the other is refused at start, and the winner's files agree."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "bptt", "train", "--text", text, *TINY, "--steps", "20",
            "--checkpoint-dir", str(run)]  # fmt: skip
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    _, err = next((out, err) for code, out, err in results if code == 2)
    assert "is in use by another run" in err or "already holds a run" in err, err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert load_checkpoint(run).step == 20
    _agree(run)


# ---- latest.npz and best.npz never disagree --------------------------------------------


def _fail_writing(monkeypatch, name: str) -> None:
    """Every write of ``name`` fails with ENOSPC (the other file is written)."""
    real = checkpoint.save_checkpoint

    def save(path, ckpt):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, ckpt)

    monkeypatch.setattr("bptt.train.loop.save_checkpoint", save)


FAILURES = {
    "best.npz cannot be written": (BEST, 1, "cannot write"),
    "latest.npz cannot be written after best.npz": (LATEST, 1, "cannot write"),
    "best.npz deleted": ("delete", 0, "best.npz is missing"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_latest_and_best_agree_after_a_failed_write(text, tmp_path, monkeypatch, capsys,
                                                    failure) -> None:  # fmt: skip
    run = tmp_path / "run"
    common = ["--checkpoint-dir", str(run)]
    assert _train(text, *common, "--steps", "5", "--lr", "0.05") == 0
    what, status, fragment = FAILURES[failure]
    if what == "delete":
        (run / BEST).unlink()
    else:
        _fail_writing(monkeypatch, what)
    got = _train(text, "--resume", str(run), "--steps", "10")
    out = capsys.readouterr()
    assert got == status and fragment in out.out + out.err, out
    monkeypatch.undo()
    if what == BEST:  # nothing was replaced: the two still agree
        _agree(run)
    if what == LATEST:  # best.npz of step 10 ahead of latest.npz of step 5
        assert peek_meta(run / BEST)["step"] == 10 and load_checkpoint(run).step == 5
    if what != "delete":
        assert _train(text, "--resume", str(run), "--steps", "15") == 0
        out = capsys.readouterr()
    if what == LATEST:
        assert "holds the best of step 10, which latest.npz did not record" in out.out, out
    _agree(run)
    best = peek_meta(run / BEST)["step"]
    assert f"at step {best}\n" in out.out and f"best:   {run / BEST}" in out.out, out.out


@POSIX
def test_a_filesystem_that_refuses_flock_falls_back_to_the_lock_file(tmp_path, monkeypatch):
    import fcntl
    import types

    def refuse(fd, how):
        raise OSError(errno.ENOLCK, "No locks available")

    fake = types.SimpleNamespace(flock=refuse, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB,
                                 LOCK_UN=fcntl.LOCK_UN)  # fmt: skip
    monkeypatch.setattr(rundir, "fcntl", fake)
    lock = rundir.RunLock(tmp_path).acquire()
    assert f'"pid": {os.getpid()}' in (tmp_path / rundir.LOCK_NAME).read_text()
    with pytest.raises(checkpoint.CheckpointError, match="in use by another run"):
        rundir.RunLock(tmp_path).acquire()
    lock.release()
    rundir.RunLock(tmp_path).acquire().release()
