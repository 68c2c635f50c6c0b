"""Data-parallel training: ``bptt.train.distributed`` and ``bptt/train/parallel.py``.

In this process (no MPI): the step's two parts on simulated ranks give the one-process
step (on every backend), validation split into parts adds up, the refusals say what
to do. Under ``mpiexec -n 2`` (few launches, each bounded by a timeout): 2 ranks x B/2
streams train as 1 rank x B (every optimizer, dropout, clipping), checkpoints move
between 2 ranks and 1, ``bptt train`` writes once and refuses bad starts on every
rank, and a rank that is killed, raises or hangs ends the job. The MPI tests skip
without mpi4py or mpiexec (both come with the ``test`` extra, so CI runs them).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Backend, jax_x64, load
from mpi_worker import OPTIMIZERS, STEPS, config
from train_helpers import SMALL_TEXT, small_config, small_corpus

from bptt import cli, train
from bptt.execution.compiled import compile_step
from bptt.text.validation import evaluate, layout_validation
from bptt.train import allreduce, distributed, make_train_step
from bptt.train.checkpoint import load_checkpoint
from bptt.train.parallel import make_gradient_part, make_parallel_step, make_update_part

HERE = Path(__file__).resolve().parent
MPIEXEC = shutil.which(
    "mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
)
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="mpi4py or mpiexec missing: pip install 'bptt[mpi]' (the test extra has both)",
)
linux_only = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
LAUNCH_TIMEOUT = 120  # seconds for one mpiexec launch: no test can hang CI
TINY = ["--hidden", "12", "--batch", "4", "--seq-len", "16", "--sample-length", "10",
        "--no-progress", "--dtype", "float64", "--backend", "numpy"]  # fmt: skip


def _env() -> dict[str, str]:
    """The child processes import tests' helpers and this checkout's bptt."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def _mpiexec(*argv: str, n: int = 2) -> list[str]:
    return [MPIEXEC, "-n", str(n), *argv]


def _launch(argv: list[str], cwd: Path, timeout: float = LAUNCH_TIMEOUT):
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


# ---- the step's parts, ranks simulated in this process -------------------------------------


def _simulated_ranks(be, cfg: train.TrainConfig, size: int, steps: int):
    """Parameters after ``steps`` of the parts on ``size`` simulated ranks (their buffers
    summed here), and after the one-process step, from the same start."""
    trainer = train.Trainer.create(small_corpus(), cfg, backend=be)
    carry, layout, model = trainer.state.carry, trainer.state.layout, trainer.model
    assert model.cell == cfg.cell and model.layers == cfg.layers
    one = make_train_step(trainer.optimizer, layout, dropout=cfg.dropout, seed=cfg.seed,
                          model=model)  # fmt: skip
    shards = [distributed.Shard.of(cfg.batch, r, size) for r in range(size)]
    parts = [(make_gradient_part(layout, s, dropout=cfg.dropout, seed=cfg.seed, model=model),
              make_update_part(trainer.optimizer, layout, s)) for s in shards]  # fmt: skip
    ranks = [carry._replace(hidden=carry.hidden[..., s.start : s.stop, :]) for s in shards]
    single, norms = carry, []
    for k in range(steps):
        x, y = trainer.feed.chunk(k)  # (T, B)
        single, _, norm = one(single, x, y)
        norms.append(float(be.to_numpy(norm)))
        outs = [g(c, x[:, s.start : s.stop], y[:, s.start : s.stop])
                for (g, _), c, s in zip(parts, ranks, shards, strict=True)]  # fmt: skip
        total = outs[0][0]
        for buf, _ in outs[1:]:
            total = total + buf  # what the all-reduce does
        ranks = [u(c, total, h)[0] for (_, u), c, (_, h) in zip(parts, ranks, outs, strict=True)]
    return [be.to_numpy(c.params) for c in ranks], be.to_numpy(single.params), norms


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_two_simulated_ranks_step_as_one_process(name) -> None:
    """Dropout masks, clipping (active: every norm above 0.05), every optimizer: the
    same parameters to rounding, and every rank the same bits."""
    from bptt import backends

    ranks, single, norms = _simulated_ranks(backends.get_backend("numpy"), config(name), 2, STEPS)
    assert min(norms) > config(name).clip  # the clip acted at every step
    assert np.array_equal(ranks[0], ranks[1])
    np.testing.assert_allclose(ranks[0], single, rtol=0, atol=1e-13 * np.abs(single).max())


def test_ranks_of_a_relu_stack_step_as_one_process() -> None:
    """Two layers (a mask per layer, each cut to the rank's streams), relu, 4 ranks."""
    from bptt import backends

    cfg = config("adam", layers=2, cell="relu", batch=8)
    ranks, single, _ = _simulated_ranks(backends.get_backend("numpy"), cfg, 4, STEPS)
    assert all(np.array_equal(ranks[0], r) for r in ranks[1:])
    np.testing.assert_allclose(ranks[0], single, rtol=0, atol=1e-13 * np.abs(single).max())


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_ranks_of_a_gated_stack_step_as_one_process(cell) -> None:
    """Gated cells: each rank carries its streams' share of the state (LSTM: (2, L, B/N,
    D), h and c), the parts add up to the one-process step."""
    from bptt import backends

    cfg = config("adam", layers=2, cell=cell, batch=8)
    ranks, single, _ = _simulated_ranks(backends.get_backend("numpy"), cfg, 2, STEPS)
    assert np.array_equal(ranks[0], ranks[1])
    np.testing.assert_allclose(ranks[0], single, rtol=0, atol=1e-13 * np.abs(single).max())


def test_one_simulated_rank_is_the_one_process_step_bit_for_bit() -> None:
    """The parallel parts on one rank are make_train_step's arithmetic exactly: when the
    one-process step changes, the data-parallel one must change with it."""
    from bptt import backends

    for name in OPTIMIZERS:
        ranks, single, _ = _simulated_ranks(backends.get_backend("numpy"), config(name), 1, 3)
        assert np.array_equal(ranks[0], single), name


EAGER = [Backend.NUMPY, Backend.STRICT, Backend.STRICT_DEVICE1, Backend.TORCH, Backend.CUPY]


@pytest.mark.parametrize("which", [
    pytest.param(b, id=b.id, marks=[pytest.mark.gpu] if b is Backend.CUPY else []) for b in EAGER
])  # fmt: skip
def test_simulated_ranks_on_every_eager_backend(which) -> None:
    """Eager JAX would compile each operation apart (seconds): JAX has the test below."""
    ranks, single, _ = _simulated_ranks(load(which), config("adam"), 2, 2)
    np.testing.assert_allclose(ranks[0], single, rtol=0, atol=1e-12)


class _OneRank:
    """A communicator of one rank that sums nothing (what the step calls of one)."""

    rank, size, is_root = 0, 1, True

    def bcast_nccl_id(self, make):
        return make()

    def watch(self, what: str):
        return contextlib.nullcontext()

    def allreduce_host(self, buf):
        return buf


def test_jax_runs_the_parts_jitted_apart_with_a_host_copy_between() -> None:
    pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    with jax_x64(True):
        be = load(Backend.JAX)
        cfg = config("adam", seq_len=2, hidden=4)
        trainer = train.Trainer.create(small_corpus(), cfg, backend=be)
        layout, carry = trainer.state.layout, trainer.state.carry
        step = make_train_step(trainer.optimizer, layout, dropout=cfg.dropout, seed=cfg.seed,
                               model=trainer.model)  # fmt: skip
        one = compile_step(step, be, "jit")
        parts = make_parallel_step(trainer.optimizer, layout, _OneRank(), be,
                                   distributed.Shard.of(cfg.batch, 0, 1), dropout=cfg.dropout,
                                   seed=cfg.seed, model=trainer.model)  # fmt: skip
        assert parts.mode == "jit" and "one host copy of the flat buffer" in parts.description
        a = b = carry
        for k in range(2):
            x, y = trainer.feed.chunk(k)
            a, b = one(a, x, y)[0], parts(b, x, y)[0]
        np.testing.assert_allclose(be.to_numpy(b.params), be.to_numpy(a.params), rtol=1e-14)
        assert parts.compile_seconds > 0


@pytest.mark.gpu
def test_nccl_sums_on_the_device_without_a_host_read() -> None:
    """CuPy: ``auto`` picks NCCL; one rank's NCCL communicator (what a job of one GPU
    per rank makes on each) sums in place, on the current stream, with no host read."""
    be = load(Backend.CUPY)
    if not allreduce.nccl_available():
        pytest.fail("CuPy is usable but cupy.cuda.nccl does not import: install NCCL")
    reduce = allreduce.gradient_allreduce(_OneRank(), be, "auto")
    assert "NCCL" in reduce.description
    with be.activate():
        import cupy

        buf = be.xp.arange(7, dtype=be.xp.float64)
        with cupy.cuda.Stream() as stream:
            out = reduce(buf)
        stream.synchronize()
    assert out is buf and np.array_equal(be.to_numpy(out), np.arange(7.0))


def test_validation_parts_add_up_to_the_whole() -> None:
    from bptt import backends

    be, corpus = backends.get_backend("numpy"), small_corpus()
    trainer = train.Trainer.create(corpus, small_config(), backend=be)
    model = trainer.model
    val = layout_validation(corpus.val, streams=4, warmup=8, backend=be, dtype="float64")
    whole = evaluate(model, trainer.params, val)
    for parts in (2, 3, 6):  # 6 parts of 4 streams: two ranks score nothing
        vals = [layout_validation(corpus.val, streams=4, warmup=8, backend=be, dtype="float64",
                                  part=(i, parts)) for i in range(parts)]  # fmt: skip
        assert sum(v is None for v in vals) == max(0, parts - 4)
        total = sum(evaluate(model, trainer.params, v) for v in vals if v is not None)
        assert total == pytest.approx(whole, rel=1e-13)


def test_a_batch_the_ranks_do_not_divide_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"--batch 6: .* 4 ranks .* use --batch 4 or 8"):
        distributed.Shard.of(6, 0, 4)
    assert distributed.Shard.of(8, 3, 4)[3:] == (6, 8)


def test_the_ranks_messages_name_a_checkpoint_only_if_this_run_wrote_one(tmp_path) -> None:
    """The watchdog's and the parameter check's advice: resume from the last checkpoint
    this run wrote, or, when it wrote none, start again."""
    alone = train.Trainer.create(small_corpus(), small_config(), backend="numpy")
    alone.run(steps=2)
    assert alone.comm.saved is None and "start it again" in alone.comm.saved_note()
    saving = train.Trainer.create(small_corpus(), small_config(eval_every=2), backend="numpy",
                                  checkpoint_dir=tmp_path)  # fmt: skip
    saving.run(steps=2)
    note = saving.comm.saved_note()
    assert f"{tmp_path / 'latest.npz'} (step 2), is complete: resume from it" in note


class _ThreeRanks(distributed.Local):
    """Rank 0 of three, as far as the shard is concerned (no MPI)."""

    size = 3

    def shard(self, batch: int) -> distributed.Shard:
        return distributed.Shard.of(batch, 0, 3)


def test_a_batch_the_ranks_cannot_split_on_a_resume_names_rank_counts_not_batch(tmp_path):
    """--batch cannot change on a resume: the fix offered is a number of ranks."""
    cfg = small_config(batch=4)
    with pytest.raises(ValueError, match=r"use --batch 3 or 6"):
        train.Trainer.create(small_corpus(), cfg, backend="numpy", comm=_ThreeRanks())
    trainer = train.Trainer.create(small_corpus(), cfg, backend="numpy", checkpoint_dir=tmp_path)
    trainer.run(steps=2)
    ckpt = load_checkpoint(tmp_path / "latest.npz")
    with pytest.raises(ValueError) as info:
        train.Trainer.resume(ckpt, small_corpus(), backend="numpy", comm=_ThreeRanks())
    message = str(info.value)
    assert "a resumed run keeps its batch" in message and "N in [1, 2, 4]" in message
    assert "use --batch" not in message


def test_asking_for_mpi_without_mpi4py_says_how_to_install(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    with pytest.raises(distributed.MPIUnavailableError, match=r"pip install 'bptt\[mpi\]'"):
        distributed.Communicator()
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--distributed", "mpi", "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and "pip install 'bptt[mpi]'" in err[-1]
    monkeypatch.setenv("PMI_SIZE", "2")  # started by mpiexec -n 2: auto wants MPI
    monkeypatch.setenv("PMI_RANK", "1")  # ... and rank 1 says nothing: rank 0 says it
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--steps", "1"])
    assert info.value.code == 2 and capsys.readouterr().err == ""
    monkeypatch.setenv("PMI_RANK", "0")
    with pytest.raises(SystemExit):
        cli.main(["train", "--steps", "1"])
    assert "started as one of 2 processes" in capsys.readouterr().err


def test_all_reduce_modes_a_backend_cannot_run_are_refused() -> None:
    from bptt import backends

    numpy, strict = backends.get_backend("numpy"), backends.get_backend("array_api_strict")
    with pytest.raises(ValueError, match="not available on the numpy backend"):
        allreduce.gradient_allreduce(None, numpy, "nccl")
    with pytest.raises(ValueError, match="not available on the array_api_strict"):
        allreduce.gradient_allreduce(None, strict, "mpi")
    with pytest.raises(ValueError, match="expected one of"):
        allreduce.gradient_allreduce(None, numpy, "ring")
    assert "host copy" in allreduce.gradient_allreduce(None, strict, "auto").description
    with pytest.raises(ValueError, match="cuda-graph: not with data-parallel"):
        make_parallel_step(None, None, None, numpy, distributed.Shard.of(4, 0, 2),
                           compile="cuda-graph", model=None)  # fmt: skip


# ---- under mpiexec -n 2 -------------------------------------------------------------------


@needs_mpi
def test_two_ranks_train_as_one_and_checkpoints_move_between_them(tmp_path) -> None:
    """One launch: every optimizer, 2 ranks against 1; a 2-rank checkpoint continued on 1
    rank, a 1-rank checkpoint on 2; the start-up refusals; the parameter check; votes."""
    corpus = small_corpus()
    one = train.Trainer.create(corpus, config("adam"), backend="numpy",
                               checkpoint_dir=tmp_path / "one")  # fmt: skip
    one.run(steps=STEPS)  # the 1-rank checkpoint the ranks continue
    ten = train.Trainer.create(corpus, config("adam"), backend="numpy")
    ten.run(steps=2 * STEPS)  # what both continuations must reach
    worker = [sys.executable, str(HERE / "mpi_worker.py"), "equivalence"]
    out = _launch(_mpiexec(*worker, str(tmp_path), str(tmp_path / "one" / "latest.npz")), tmp_path)
    assert out.returncode == 0, out.stderr
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name, got in seen[0]["optimizers"].items():
        assert got["params_rel"] < 1e-13, name
        assert got["hidden_shape"] == [2, 12] and got["saved_hidden"] == [4, 12], name
        assert got["saved_hidden_diff"] < 1e-12, name  # rank 0 saved every rank's state
        for key in ("train_bpc", "val_bpc"):
            np.testing.assert_allclose(got["history"][key], got["reference_history"][key],
                                       rtol=1e-13)  # fmt: skip
        assert sorted(p.name for p in (tmp_path / f"run-{name}").iterdir()) == [
            ".lock", "best.npz", "latest.npz"]  # fmt: skip
    # the 2-rank checkpoint at step 5, continued here on one rank
    two = load_checkpoint(tmp_path / "run-adam" / "latest.npz")
    resumed = train.Trainer.resume(two, corpus, backend="numpy")
    resumed.run(steps=2 * STEPS)
    expected = ten.state.carry.params
    np.testing.assert_allclose(resumed.state.carry.params, expected, rtol=0, atol=1e-13)
    np.testing.assert_allclose(seen[0]["resumed_params"], expected, rtol=0, atol=1e-13)
    assert seen[0]["resumed_history"]["val_step"] == [5.0, 10.0]  # the 1-rank one, then its own
    assert seen[0]["resumed_history"]["val_bpc"][-1] == pytest.approx(ten.history["val_bpc"][-1],
                                                                      rel=1e-13)  # fmt: skip
    for rank in seen:  # every rank refused, with one message naming the option
        assert "run.config.lr: rank 0 has 0.01, rank 1 0.02" in rank["refusals"]["options"]
        assert rank["refusals"]["options"].startswith("StartupError")
        assert "--batch 3: data-parallel training on 2 ranks" in rank["refusals"]["batch"]
        assert "the ranks' parameters differ at step 1" in rank["divergence"]
        assert [any(v) for v in rank["votes"]] == [False, False, False, True, False]


@needs_mpi
def test_bptt_train_on_two_ranks_writes_once_and_refuses_bad_starts(tmp_path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(SMALL_TEXT, encoding="utf-8")
    argv = ["train", "--text", str(text), *TINY, "--steps", "8", "--eval-every", "4",
            "--log-every", "2", "--layers", "2", "--dropout", "0.2"]  # fmt: skip
    assert cli.main([*argv, "--checkpoint-dir", str(tmp_path / "one")]) == 0
    bptt_cmd = [sys.executable, "-m", "bptt"]
    out = _launch(_mpiexec(*bptt_cmd, *argv, "--checkpoint-dir", "two"), tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("bptt train:") == 1 and out.stdout.count("stopped at step 8") == 1
    assert "data-parallel: 2 ranks on one machine" in out.stdout
    assert "MPI all-reduce in place on the flat buffer" in out.stdout
    a, b = (load_checkpoint(tmp_path / d / "latest.npz") for d in ("one", "two"))
    assert a.step == b.step == 8 and a.hidden.shape == b.hidden.shape == (2, 4, 12)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=0, atol=1e-13)
    assert {p.name for p in (tmp_path / "two").iterdir()} == {".lock", "latest.npz", "best.npz"}
    # a batch 2 ranks cannot split, and ranks started with different options: exit 2,
    # one line, nothing written
    out = _launch(_mpiexec(*bptt_cmd, *argv, "--batch", "5", "--checkpoint-dir", "x"), tmp_path)
    assert out.returncode == 2 and out.stderr.count("error:") == 1
    assert out.stderr.strip().splitlines()[-1].startswith("bptt train: error: --batch 5: ")
    differ = [*bptt_cmd, *argv, "--checkpoint-dir", "x"]
    out = _launch([MPIEXEC, "-n", "1", *differ, ":", "-n", "1", *differ, "--lr", "0.1"], tmp_path)
    assert out.returncode == 2 and out.stderr.count("error:") == 1
    assert "run.config.lr: rank 0 has 0.002, rank 1 0.1" in out.stderr
    assert not (tmp_path / "x").exists()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _rank_pid(launcher: int, rank: int) -> int:
    """The process of ``rank`` among ``launcher``'s descendants (MPICH sets PMI_RANK)."""
    todo = [launcher]
    while todo:
        pid = todo.pop()
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"PMI_RANK={rank}".encode() in env:
                return pid
            todo += _children(pid)
        except OSError:  # gone meanwhile
            continue
    raise AssertionError(f"no process of rank {rank} under {launcher}")


def _start(argv: list[str], cwd: Path, until: Path) -> subprocess.Popen:
    proc = subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not until.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never wrote {until}: {proc.communicate()}")
        time.sleep(0.02)
    return proc


@needs_mpi
@linux_only
def test_ctrl_c_stops_every_rank_at_one_step_and_a_killed_rank_ends_the_job(tmp_path) -> None:
    """Ctrl-C (mpiexec passes it to every rank): one final checkpoint, exit 130; then, on
    resume, rank 1 SIGKILLed mid-run: mpiexec ends the other within seconds, and the
    last checkpoint loads and resumes."""
    text = tmp_path / "text.txt"
    text.write_text(SMALL_TEXT, encoding="utf-8")
    argv = _mpiexec(sys.executable, "-m", "bptt", "train", "--text", str(text), *TINY,
                    "--steps", "100000", "--eval-every", "3", "--log-every", "3",
                    "--checkpoint-dir", "run")  # fmt: skip
    latest = tmp_path / "run" / "latest.npz"
    proc = _start(argv, tmp_path, until=latest)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 130, stderr
    assert stdout.count("interrupted: resume with") == 1
    stopped = load_checkpoint(latest).step
    assert f"(step {stopped} saved in" in stdout
    proc = _start([*argv, "--resume", "run"], tmp_path, until=tmp_path / "run" / "best.npz")
    while load_checkpoint(latest).step <= stopped:  # a checkpoint of this run
        time.sleep(0.02)
    t0 = time.monotonic()
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0 and time.monotonic() - t0 < 20
    assert "Killed (signal 9)" in stdout  # mpiexec names what happened
    ckpt = load_checkpoint(latest)  # the last checkpoint is complete
    resumed = train.Trainer.resume(ckpt, small_corpus_of(text), backend="numpy")
    resumed.run(steps=ckpt.step + 1)


def small_corpus_of(path: Path):
    from bptt.text.data import load_corpus

    return load_corpus(text=str(path))


@needs_mpi
def test_a_rank_that_raises_ends_every_rank(tmp_path) -> None:
    t0 = time.monotonic()
    out = _launch(_mpiexec(sys.executable, str(HERE / "mpi_worker.py"), "raise",
                           str(tmp_path)), tmp_path)  # fmt: skip
    assert out.returncode == 1 and time.monotonic() - t0 < 60
    assert "rank 1 of 2" in out.stderr and "RuntimeError: a fault on rank 1 at step 3" in out.stderr
    assert "ending every rank (MPI_Abort)" in out.stderr
    assert not list(tmp_path.glob("rank*.json"))  # no rank went on


@needs_mpi
@linux_only
def test_a_rank_that_hangs_is_ended_by_the_watchdog(tmp_path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(SMALL_TEXT, encoding="utf-8")
    argv = _mpiexec(sys.executable, "-m", "bptt", "train", "--text", str(text), *TINY,
                    "--steps", "100000", "--eval-every", "3", "--log-every", "3",
                    "--checkpoint-dir", "run", "--rank-timeout", "2")  # fmt: skip
    proc = _start(argv, tmp_path, until=tmp_path / "run" / "latest.npz")
    t0 = time.monotonic()
    os.kill(_rank_pid(proc.pid, 1), signal.SIGSTOP)  # alive, but never answers again
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1 and time.monotonic() - t0 < 30
    assert "rank 0 of 2 (" in stderr and "waited 2 s for the other ranks" in stderr
    assert "The last checkpoint, run/latest.npz (step " in stderr  # this run wrote it
    load_checkpoint(tmp_path / "run" / "latest.npz")


# ---- every phase at which a rank can fail ends the job, within a bound, with one line ----

START_TIMEOUT = 3  # seconds: the stated bound for a rank that never starts MPI
PHASE_BOUND = 30  # seconds any of these jobs may take, MPI start-up and imports included


def _train_argv(text: Path, *more: str) -> list[str]:
    return ["train", "--text", str(text), *TINY, "--steps", "4", "--eval-every", "2",
            "--log-every", "1", "--checkpoint-dir", "run", "--start-timeout",
            str(START_TIMEOUT), *more]  # fmt: skip


# (phase, rank 1's arguments to `python -m bptt` (rank 0 trains), or a command of its own;
#  the job's exit status (None: any but 0), the one line's fragment)
PHASES = [
    ("its options do not parse", lambda t: _train_argv(t, "--hidden", "x"), 2,
     "rank 1 of 2 (vm) could not start: its command line was refused (bptt train: error: "
     "argument --hidden: expected a positive integer; got 'x')"),
    ("--version", lambda t: ["--version"], 2,
     "could not start: it exited before starting (exit status 0: --version or --help)"),
    ("--distributed none on one rank", lambda t: _train_argv(t, "--distributed", "none"), 2,
     "different options: distributed: rank 0 has 'mpi', rank 1 'none'"),
    ("an option refused before MPI", lambda t: _train_argv(t, "--bidirectional"), 2,
     "could not start: --bidirectional: a next-character model"),
    ("its text is missing", lambda t: _train_argv(t.parent / "missing.txt"), 2,
     "could not start: text: "),
    ("it ends before MPI without a word", lambda t: ["-c", "raise SystemExit(0)"], None,
     f"the 2 ranks did not all start MPI within {START_TIMEOUT} s (--start-timeout)"),
    ("it crashes before MPI", lambda t: ["-c", "import os; os._exit(1)"], None,
     f"did not all start MPI within {START_TIMEOUT} s"),
]  # fmt: skip


@needs_mpi
@pytest.mark.parametrize(("rank1", "status", "fragment"), [p[1:] for p in PHASES],
                         ids=[p[0] for p in PHASES])  # fmt: skip
def test_a_rank_that_fails_before_or_at_start_ends_the_job_with_one_line(
    tmp_path, rank1, status, fragment
) -> None:
    text = tmp_path / "text.txt"
    text.write_text(SMALL_TEXT, encoding="utf-8")
    rank0 = [sys.executable, "-m", "bptt", *_train_argv(text)]
    other = rank1(text)
    other = [sys.executable, *(other if other[0] == "-c" else ["-m", "bptt", *other])]
    t0 = time.monotonic()
    out = _launch([MPIEXEC, "-n", "1", *rank0, ":", "-n", "1", *other], tmp_path,
                  timeout=PHASE_BOUND)  # fmt: skip
    assert time.monotonic() - t0 < PHASE_BOUND
    assert out.returncode != 0 if status is None else out.returncode == status, out
    ours = [line for line in out.stderr.splitlines() if line.startswith("bptt")]
    assert len(ours) == 1 and fragment in ours[0], out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


@needs_mpi
def test_the_last_checkpoint_failing_and_a_nan_end_every_rank_with_one_line(tmp_path) -> None:
    """The last phase: rank 0 cannot write the final checkpoint (the disk is full): every
    rank stops, exit 1, one line, the previous checkpoint kept. A NaN before any
    checkpoint says to start again, never to resume from a checkpoint that is not there."""
    text = tmp_path / "text.txt"
    text.write_text(SMALL_TEXT, encoding="utf-8")
    worker = [sys.executable, str(HERE / "mpi_worker.py"), "last-save", str(tmp_path)]
    out = _launch(_mpiexec(*worker, *_train_argv(text)), tmp_path, timeout=PHASE_BOUND)
    ours = [line for line in out.stderr.splitlines() if line.startswith("bptt")]
    assert out.returncode == 1 and len(ours) == 1, out
    assert "checkpoint: cannot write" in ours[0] and "at step 4: No space left" in ours[0]
    assert load_checkpoint(tmp_path / "run" / "latest.npz").step == 2
    nan = _train_argv(text, "--optimizer", "sgd", "--lr", "1e38", "--clip", "0", "--dtype",
                      "float32", "--eval-every", "50", "--checkpoint-dir", "nan")  # fmt: skip
    out = _launch(_mpiexec(sys.executable, "-m", "bptt", *nan), tmp_path, timeout=PHASE_BOUND)
    ours = [line for line in out.stderr.splitlines() if line.startswith("bptt")]
    assert out.returncode == 1 and len(ours) == 1, out
    assert "no checkpoint was written. Start the run again with a lower --lr" in ours[0]
    assert "Resume" not in ours[0] and "resume" not in ours[0]


@needs_mpi
def test_a_command_that_never_trains_over_mpi_keeps_its_ranks_apart(tmp_path) -> None:
    """``mpiexec`` running ``bptt sample``: a rank whose options do not parse says so
    itself and waits for no one; the other rank's sample is unaffected."""
    text = tmp_path / "text.txt"
    text.write_text(SMALL_TEXT, encoding="utf-8")
    assert cli.main(["train", "--text", str(text), *TINY, "--steps", "2",
                     "--checkpoint-dir", str(tmp_path / "run")]) == 0  # fmt: skip
    good = [sys.executable, "-m", "bptt", "sample", "run", "--length", "5"]
    bad = [sys.executable, "-m", "bptt", "sample", "--length", "x"]
    t0 = time.monotonic()
    out = _launch([MPIEXEC, "-n", "1", *good, ":", "-n", "1", *bad], tmp_path,
                  timeout=PHASE_BOUND)  # fmt: skip
    assert out.returncode == 2 and time.monotonic() - t0 < PHASE_BOUND, out
    assert "bptt sample: error: argument --length" in out.stderr and "rank" not in out.stderr
