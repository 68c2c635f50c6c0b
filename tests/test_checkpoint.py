"""Checkpoints: round trip, no pickle, atomic writes, portability, one clear error each."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from train_helpers import small_corpus, small_trainer

import bptt
from bptt import backends, optim, train
from bptt.train import Trainer, checkpoint
from bptt.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

NUMPY = backends.get_backend("numpy")


@pytest.fixture
def saved(tmp_path):
    trainer = small_trainer(NUMPY, tmp_path)
    trainer.run(steps=5)
    return trainer, tmp_path / checkpoint.LATEST


def test_round_trip_without_pickle(saved) -> None:
    trainer, path = saved
    with np.load(path, allow_pickle=False) as z:  # nothing in it needs pickle
        assert int(z["format_version"]) == checkpoint.FORMAT_VERSION
    ckpt = load_checkpoint(path.parent)  # a directory means its latest.npz
    ref = trainer.checkpoint()
    assert ckpt.step == 5 and ckpt.vocab == trainer.corpus.vocab.chars
    for k, v in ref.params.items():
        np.testing.assert_array_equal(ckpt.params[k], v)
    assert set(ckpt.opt_state) == set(ref.opt_state)
    assert ckpt.opt_state["1/1/count"] == 5  # Adam's update count, after the clip's norm
    for path, value in ref.opt_state.items():
        np.testing.assert_array_equal(ckpt.opt_state[path], value)
    np.testing.assert_array_equal(ckpt.hidden, ref.hidden)
    assert ckpt.position == ref.position and ckpt.rng_state == ref.rng_state
    assert ckpt.config["model"] == trainer.model.config() and ckpt.best["best_step"] == 5
    assert "hidden" not in ckpt.config["train"]  # the configuration is stored once
    assert ckpt.train == trainer.config and ckpt.model == trainer.model
    np.testing.assert_array_equal(ckpt.history["val_step"], [5.0])


def test_stateless_optimizer_round_trips(tmp_path) -> None:
    """Plain SGD keeps only the clip's last norm and the rate schedule's count."""
    trainer = small_trainer(NUMPY, tmp_path, optimizer="sgd", lr=0.1)
    trainer.run(steps=5)
    stored = load_checkpoint(tmp_path).opt_state
    assert set(stored) == {"0/norm", "1/2/count"} and stored["1/2/count"] == 5
    resumed = train.Trainer.resume(load_checkpoint(tmp_path), small_corpus())
    assert resumed.run(steps=7).step == 7


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_a_format_1_checkpoint_resumes(name: str) -> None:
    """A checkpoint written by bptt 0.1.0 before the optimizer state was named by path
    (commit cb4b3de, 5 steps): it resumes, and 5 more steps give that version's 10-step
    parameters to rounding (Adam's step is now grouped as optax groups it; sgd's
    weight_decay of that version was an L2 penalty and loads as --l2)."""
    ckpt = load_checkpoint(DATA / f"format1_{name}_step5.npz")
    assert ckpt.format_version == 1
    trainer = train.Trainer.resume(ckpt, small_corpus())
    if name == "sgd":
        assert (trainer.config.l2, trainer.config.weight_decay) == (0.01, 0.0)
    trainer.run(steps=10)
    with np.load(DATA / f"format1_{name}_step10_params.npz") as ref:
        for key, value in trainer.params.items():
            np.testing.assert_allclose(value, ref[key], rtol=1e-9, atol=1e-12, err_msg=key)


EARLIER = ["format2_tanh_adam_step5", "format2_relu2_rmsprop_step5", "format3_lstm2_adagrad_step5"]


@pytest.mark.parametrize("name", EARLIER)
def test_an_earlier_checkpoint_resumes(name: str) -> None:
    """Format 2, written by bptt 4a907f7 (tests/data/make_format2.py): the model and the
    options apart (the tanh one as written before architectures were recorded), RMSProp's
    second moment as "total". Format 3 as this release writes it (two LSTM layers, their
    (2, L, B, D) state, Adagrad's sum_of_squares): a change of the format that keeps its
    version fails here. 5 more steps equal a run that never stopped, bit for bit."""
    ckpt = load_checkpoint(DATA / f"{name}.npz")
    assert ckpt.format_version == int(name[6]) and "hidden" not in ckpt.config["train"]
    resumed = train.Trainer.resume(ckpt, small_corpus())
    assert resumed.model == ckpt.model and resumed.config == ckpt.train
    if "relu" in name:
        assert ckpt.model == bptt.RNN(63, 12, 63, cell="relu", layers=2, initializer="xavier")
        assert np.abs(ckpt.hidden).max() > 1 and "1/1/nu/W" in ckpt.opt_state
    straight = train.Trainer.create(small_corpus(), resumed.config)
    straight.run(steps=10)
    resumed.run(steps=10)
    for key, value in straight.params.items():
        np.testing.assert_array_equal(resumed.params[key], value, err_msg=key)
    for path, value in optim.state_arrays(straight.opt_state).items():
        np.testing.assert_array_equal(optim.state_arrays(resumed.opt_state)[path], value, path)


def test_write_is_atomic(saved, monkeypatch) -> None:
    trainer, path = saved
    before = path.read_bytes()

    def crash(f, **arrays):  # dies halfway through writing
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, trainer.checkpoint())
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_cross_backend(tmp_path) -> None:
    """Saved from array_api_strict's device1 (a GPU stand-in), resumed on NumPy."""
    device1 = backends.get_backend("array_api_strict", "device1")
    trainer = small_trainer(device1, tmp_path)
    trainer.run(steps=5)
    resumed = Trainer.resume(load_checkpoint(tmp_path), small_corpus(), backend=NUMPY)
    for k, v in resumed.params.items():
        assert isinstance(v, np.ndarray)
        np.testing.assert_array_equal(v, device1.to_numpy(trainer.params[k]))
    resumed.run(steps=7)
    assert resumed.step == 7


def _rewrite(path, **changes) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_missing(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.npz")


def test_truncated(saved) -> None:
    _, path = saved
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is truncated"):
        load_checkpoint(path)


def test_not_a_checkpoint(saved) -> None:
    _, path = saved
    path.write_bytes(b"hello, this is not a zip archive")
    with pytest.raises(CheckpointError, match=r"not a bptt checkpoint \(not an .npz archive\)"):
        load_checkpoint(path)


def test_corrupt_bytes(saved) -> None:
    _, path = saved
    with zipfile.ZipFile(path) as z:  # flip a byte inside the stored parameters
        info = z.getinfo("param/W.npy")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="is corrupt"):
        load_checkpoint(path)


def test_corrupt_contents(saved) -> None:
    _, path = saved
    _rewrite(path, meta=np.asarray("{not json", dtype=np.str_))
    with pytest.raises(CheckpointError, match=r": meta: not a JSON document"):
        load_checkpoint(path)


def test_newer_version(saved) -> None:
    _, path = saved
    _rewrite(path, format_version=np.asarray(checkpoint.FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="written by a newer bptt"):
        load_checkpoint(path)


def test_wrong_size(saved) -> None:
    _, path = saved
    ckpt = load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"hidden size \(D\) 12, but 64 was asked"):
        ckpt.check_sizes(D=64)
    with pytest.raises(CheckpointError, match="vocabulary"):
        Trainer.resume(ckpt, small_corpus().__class__.from_text("abc" * 500, source="x"))


def test_other_text_refused(saved) -> None:
    _, path = saved
    ckpt = load_checkpoint(path)
    ckpt.config["data"]["sha256"] = "0" * 64
    with pytest.raises(CheckpointError, match="whose contents differ"):
        Trainer.resume(ckpt, small_corpus())


def test_meta_is_json(saved) -> None:
    _, path = saved
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["position"].keys() == {"epoch", "chunk", "offset"}


def test_unwritable_directory_reported_at_start(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write to"):
        checkpoint.check_writable(blocker / "sub")


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path) -> None:
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    names = {
        f".latest.npz.{dead}.ab12cd.tmp": False,  # killed mid-write: removed
        f".probe.{dead}.x_y9.tmp": False,  # killed mid-probe: removed
        f".best.npz.{os.getpid()}.zz.tmp": True,  # a live writer (us): kept
        ".latest.npz.abcdef.tmp": True,  # not a name with a pid: not ours to judge
        "notes.tmp": True,
        "latest.npz": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    if os.name != "posix":
        assert checkpoint.remove_stale_temporaries(tmp_path) == []
        return
    checkpoint.check_writable(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {n for n, keep in names.items() if keep}


def test_temporary_names_carry_the_pid(saved, monkeypatch) -> None:
    import os

    trainer, path = saved
    seen = []

    def spy(f, **arrays):  # the temporary file exists now
        seen.extend(p.name for p in path.parent.glob(".*.tmp"))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", spy)
    before = path.read_bytes()
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, trainer.checkpoint())
    assert len(seen) == 1 and seen[0].startswith(f".latest.npz.{os.getpid()}."), seen
    assert path.read_bytes() == before and not list(path.parent.glob(".*.tmp"))


def test_save_failure_is_a_checkpoint_error_naming_the_step(saved, monkeypatch) -> None:
    trainer, _ = saved

    def full(f, **arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(CheckpointError, match=r"at step 5: No space left on device; the previous"):
        trainer.save()


def test_probe_writes_what_the_checkpoints_need(tmp_path, monkeypatch) -> None:
    import os

    written = []
    real_fsync = os.fsync

    def measuring_fsync(fd: int) -> None:
        written.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", measuring_fsync)
    trainer = small_trainer(NUMPY, tmp_path)
    trainer.run(steps=1)
    assert written[0] == 2 * trainer.checkpoint_bytes()  # the probe, before any step
    assert trainer.checkpoint_bytes() > (tmp_path / checkpoint.LATEST).stat().st_size


@pytest.mark.parametrize(("options", "member"), [
    ({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9}, "opt/1/1/trace/W"),
    ({"optimizer": "adagrad", "lr": 0.1}, "opt/1/1/sum_of_squares/W"),
    ({"optimizer": "rmsprop", "lr": 0.01}, "opt/1/1/nu/W"),
])  # fmt: skip
def test_each_optimizer_state_is_checked_by_its_field_names(tmp_path, options, member) -> None:
    """The template comes from the optimizer's init: every optimizer's checkpoint loads,
    and a second moment (nu, sum_of_squares) with a negative entry is refused by name."""
    small_trainer(NUMPY, tmp_path, **options).run(steps=2)
    path = tmp_path / checkpoint.LATEST
    assert member[4:] in load_checkpoint(path).opt_state
    with np.load(path, allow_pickle=False) as z:
        _rewrite(path, **{member: z[member] - 1.0})
    if "trace" in member:  # a velocity may be negative
        assert load_checkpoint(path).step == 2
        return
    with pytest.raises(CheckpointError, match=f": {member}: negative entries; "):
        load_checkpoint(path)


def test_what_cannot_be_read_back_is_never_written(saved, tmp_path) -> None:
    trainer, _ = saved
    ckpt = trainer.checkpoint()
    del ckpt.params["W"]
    with pytest.raises(CheckpointError, match=r"refusing to write .*: param/W: is not in both"):
        save_checkpoint(tmp_path / "x.npz", ckpt)
    ckpt = trainer.checkpoint()
    ckpt.config["train"]["batch"] = 5  # the carried state is (4, 12)
    with pytest.raises(CheckpointError, match=r"hidden: expected shape \(5, 12\)"):
        save_checkpoint(tmp_path / "x.npz", ckpt)
    assert not (tmp_path / "x.npz").exists()
