"""What tests/test_distributed.py runs under ``mpiexec -n 2``: one launch, many checks.

``python tests/mpi_worker.py CASE OUT_DIR [ARGS]``; each rank writes what it saw to
``OUT_DIR/rank<r>.json`` and the test compares. Cases:

- ``equivalence``: for every optimizer (dropout, clipping, weight decay, L2, a decaying
  rate), a 2-rank run of 5 steps against the 1-rank run (rank 0 runs it too); a 2-rank
  checkpoint for the test to resume on one rank; a 1-rank checkpoint (made by the test)
  resumed on 2 ranks; the start-up refusals (options that differ, a batch N does not
  divide); the parameter check; the stop vote.
- ``raise``: rank 1 raises in the middle of training, inside ``abort_on_error``.
- ``last-save``: ``bptt train ARGS`` (the command line, in this process) whose last
  checkpoint cannot be written on rank 0 (the disk is full at the final step).

No JAX or torch is imported here (slow to import); NumPy, float64 throughout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from train_helpers import small_config, small_corpus

from bptt import train
from bptt.train import distributed
from bptt.train.checkpoint import load_checkpoint

# Every optimizer with what can go wrong between ranks: dropout masks, the clip (0.05 is
# below every step's norm here), decoupled and coupled decay, a rate schedule.
OPTIMIZERS = {
    "sgd": dict(optimizer="sgd", momentum=0.9, lr=0.5),
    "adagrad": dict(optimizer="adagrad", lr=0.1),
    "rmsprop": dict(optimizer="rmsprop", lr=0.01),
    "adam": dict(optimizer="adam", lr=0.01),
}
COMMON = dict(dropout=0.3, clip=0.05, weight_decay=0.01, l2=0.001, lr_decay=0.9,
              lr_decay_every=2, log_every=2, eval_every=100)  # fmt: skip
STEPS = 5


def config(name: str, **more) -> train.TrainConfig:
    return small_config(**{**COMMON, **OPTIMIZERS[name], **more})


def compare(trainer: train.Trainer, reference: train.Trainer) -> dict:
    p, q = trainer.state.carry.params, reference.state.carry.params
    return {
        "params_rel": float(np.max(np.abs(p - q)) / np.max(np.abs(q))),
        "history": trainer.history,
        "reference_history": reference.history,
        "step": trainer.step,
    }


def equivalence(comm: distributed.Communicator, out: Path, resume_from: str) -> dict:
    seen: dict = {"optimizers": {}}
    corpus = small_corpus()
    for name in OPTIMIZERS:
        directory = out / f"run-{name}"
        t = train.Trainer.create(corpus, config(name), backend="numpy", comm=comm,
                                 checkpoint_dir=directory)  # fmt: skip
        t.run(steps=STEPS)
        seen["optimizers"][name] = {"hidden_shape": list(t.hidden.shape), "step": t.step}
        if comm.is_root:
            ref = train.Trainer.create(corpus, config(name), backend="numpy")
            ref.run(steps=STEPS)
            seen["optimizers"][name].update(compare(t, ref))
            saved = load_checkpoint(directory / "latest.npz")
            seen["optimizers"][name]["saved_hidden"] = list(saved.hidden.shape)
            hidden = np.max(np.abs(saved.hidden - np.asarray(ref.hidden)))
            seen["optimizers"][name]["saved_hidden_diff"] = float(hidden)
    # a 1-rank checkpoint (step 5) continued on 2 ranks to step 10
    ckpt = load_checkpoint(resume_from)
    t = train.Trainer.resume(ckpt, corpus, backend="numpy", comm=comm)
    t.run(steps=2 * STEPS)
    if comm.is_root:
        seen["resumed_params"] = t.state.carry.params.tolist()
        seen["resumed_history"] = t.history
    seen["refusals"] = refusals(comm, corpus)
    seen["divergence"] = divergence(comm, corpus)
    seen["votes"] = votes(comm)
    return seen


def refusals(comm: distributed.Communicator, corpus) -> dict:
    found = {}
    lr = 0.01 if comm.rank == 0 else 0.02  # ranks started with different options
    for case, cfg in (("options", config("adam", lr=lr)), ("batch", config("adam", batch=3))):
        try:
            train.Trainer.create(corpus, cfg, backend="numpy", comm=comm)
            found[case] = None
        except ValueError as e:
            found[case] = f"{type(e).__name__}: {e}"
    return found


def divergence(comm: distributed.Communicator, corpus) -> str | None:
    t = train.Trainer.create(corpus, config("adam"), backend="numpy", comm=comm)
    t.run(steps=1)
    comm.check_same(t.state.carry.params, 1, t.backend)  # the same parameters: passes
    if comm.rank == 1:  # one parameter off by a few ulps on one rank
        flat = t.state.carry.params.copy()
        flat[7] = np.nextafter(np.nextafter(flat[7], np.inf), np.inf)
        t.state.carry = t.state.carry._replace(params=flat)
    try:
        comm.check_same(t.state.carry.params, 1, t.backend)
    except distributed.RanksDivergedError as e:
        return str(e)
    return None


def votes(comm: distributed.Communicator) -> list:
    """Rank 0 alone votes to stop at call 2: every rank learns it at call 3."""
    seen = [comm.agree_stop(False, comm.rank == 0 and i == 2) for i in range(5)]
    comm.end_votes()
    return seen


def raise_on_rank_one(comm: distributed.Communicator, out: Path) -> None:
    class Boom(train.Reporter):
        def on_step(self, step: int) -> None:
            if comm.rank == 1 and step == 3:
                raise RuntimeError("a fault on rank 1 at step 3")

    t = train.Trainer.create(small_corpus(), config("adam"), backend="numpy", comm=comm)
    with distributed.abort_on_error(comm):
        t.run(steps=1000, reporter=Boom())


def fail_last_save(argv: list[str]) -> int:
    """``bptt train`` whose checkpoints at step ``--steps`` cannot be written (rank 0)."""
    import errno
    import os

    from bptt import cli
    from bptt.train import loop

    final, real = int(argv[argv.index("--steps") + 1]), loop.save_checkpoint

    def save(path, ckpt):
        if ckpt.step == final:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, ckpt)

    loop.save_checkpoint = save
    return cli.main(argv)


def main() -> None:
    case, out = sys.argv[1], Path(sys.argv[2])
    if case == "last-save":
        raise SystemExit(fail_last_save(sys.argv[3:]))
    comm = distributed.Communicator(timeout=60)
    if case == "equivalence":
        seen = equivalence(comm, out, sys.argv[3])
    elif case == "raise":
        raise_on_rank_one(comm, out)
        seen = {"finished": True}  # never: rank 1's fault ends both
    else:
        raise SystemExit(f"unknown case {case!r}")
    (out / f"rank{comm.rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
