"""``bptt evaluate``: score a checkpoint on held-out text, statically or dynamically.

    bptt evaluate CHECKPOINT                   # the run's validation split, as training scored it
    bptt evaluate CHECKPOINT --text notes.txt  # all of another file
    bptt evaluate CHECKPOINT --dynamic         # dynamic evaluation, settings tuned honestly

Static: :func:`bptt.evaluation.heldout.validation_score`, the training loop's validation (its
streams and warm-up, from the checkpoint). Dynamic (:mod:`bptt.evaluation.dynamic`): the
settings are chosen on the first ``--tune-chars`` characters, which are then not
scored; the rest is scored once with fixed weights and once dynamically.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from ._args import add_backend_arguments, nonneg_float, nonneg_int, positive_int, size

HELP = "score a checkpoint on held-out text (bits per character); --dynamic adapts as it scores"

# The default grids, chosen on the first 10,000 held-out characters of the built-in
# text, and the default T = 10, chosen on those of both built-in texts (the tuning parts,
# never scored; README, "Evaluate a checkpoint").
RMS_LR, RMS_DECAY = (1e-5, 2e-5, 3e-5, 5e-5), (0.0, 1e-3, 1e-2)
SGD_LR, SGD_DECAY = (1e-3, 3e-3, 1e-2), (0.0,)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT",
        help="a checkpoint file, or a run directory (its best.npz, else latest.npz)",
    )  # fmt: skip
    source = parser.add_argument_group("text (default: the validation split the run scored)")
    source.add_argument("--text", metavar="FILE", help="a UTF-8 file to score (all of it)")
    source.add_argument("--corpus", choices=("topics", "stdlib"),
                        help="a built-in text to score (its validation split)")  # fmt: skip
    source.add_argument("--split", choices=("validation", "all"),
                        help="the held-out tail, or all of the text (default: validation, "
                        "all for --text)")  # fmt: skip
    source.add_argument("--max-text-size", type=size, metavar="SIZE", default=1 << 30,
                        help="refuse a text larger than this (default 1G; e.g. 4G): only "
                        "regular files are read, their size checked first")  # fmt: skip
    source.add_argument("--unknown", choices=("error", "skip"), default="error",
                        help="characters outside the model's vocabulary: an error (default), "
                        "or left out of the text and counted")  # fmt: skip
    dyn = parser.add_argument_group("dynamic evaluation (Krause et al. 2018)")
    dyn.add_argument("--dynamic", action="store_true",
                     help="adapt the weights to the text as it is scored")  # fmt: skip
    dyn.add_argument("--rule", choices=("rms", "sgd"), default="rms",
                     help="rms: the paper's RMS-normalised step with a decay toward the "
                     "trained weights (default); sgd: plain gradient steps")  # fmt: skip
    dyn.add_argument("--lr", type=nonneg_float, nargs="+", metavar="ETA",
                     help=f"step sizes to try (rms: {' '.join(map(str, RMS_LR))}; "
                     f"sgd: {' '.join(map(str, SGD_LR))})")  # fmt: skip
    dyn.add_argument("--decay", type=nonneg_float, nargs="+", metavar="LAMBDA",
                     help=f"decays toward the trained weights to try (rms: "
                     f"{' '.join(map(str, RMS_DECAY))}; sgd: 0)")  # fmt: skip
    dyn.add_argument("--eps", type=nonneg_float, default=1e-5,
                     help="rms: added to the gradient's RMS (default 1e-5)")  # fmt: skip
    dyn.add_argument("--seq-len", type=positive_int, default=10,
                     help="T, characters per segment: one update each (default 10)")  # fmt: skip
    dyn.add_argument("--tune-chars", type=nonneg_int, default=10_000,
                     help="the first N held-out characters choose the settings and are not "
                     "scored (default 10000; 0 needs one setting)")  # fmt: skip
    dyn.add_argument("--stats-chunks", type=positive_int, default=100,
                     help="rms: chunks of the training text (B=64 streams of T characters) "
                     "the gradient's RMS is gathered on (default 100)")  # fmt: skip
    parser.add_argument("--dtype", choices=("float32", "float64"),
                        help="default: the checkpoint's")  # fmt: skip
    add_backend_arguments(parser, default="numpy")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import backends
    from ..text.data import DataError
    from ..train.checkpoint import BEST, CheckpointError

    parser = args._parser
    try:
        with np.errstate(all="ignore"):  # a diverging setting is one line, not warnings
            return _run(args, BEST)
    except (CheckpointError, DataError, backends.BackendError, ValueError) as e:
        parser.error(str(e))


def _load(args: argparse.Namespace, best: str) -> tuple[Any, Any, Any, dict[str, Any], str]:
    """(path, checkpoint, backend, params on the device, dtype)."""
    from pathlib import Path

    import numpy as np

    from .. import backends
    from ..train.checkpoint import CheckpointError, load_checkpoint, resolve_path

    path = Path(args.checkpoint)
    if path.is_dir() and (path / best).exists():
        path = path / best
    path = resolve_path(path)
    ckpt = load_checkpoint(path)
    bad = [k for k, v in ckpt.params.items() if not np.all(np.isfinite(v))]
    if bad:
        raise CheckpointError(f"checkpoint: parameters {bad} hold NaN or infinite values")
    be = backends.get_backend(args.backend, args.device)
    dtype = args.dtype or ckpt.train.dtype
    be.require_dtype(dtype, "--dtype")
    with be.activate():
        params = {k: be.asarray(v, dtype=dtype) for k, v in ckpt.params.items()}
    return path, ckpt, be, params, dtype


def _run(args: argparse.Namespace, best: str) -> int:
    from ..evaluation.heldout import held_out, validation_score

    path, ckpt, be, params, dtype = _load(args, best)
    text = held_out(ckpt.vocab, ckpt.config, text=args.text, corpus=args.corpus,
                    split=args.split, unknown=args.unknown,
                    max_bytes=args.max_text_size)  # fmt: skip
    sizes = ckpt.sizes
    arch = ckpt.architecture
    shape = (f", L={arch['layers']}" if arch["layers"] > 1 else "") + (
        f", {arch['nonlinearity']}" if arch["nonlinearity"] != "tanh" else ""
    )
    print(f"bptt evaluate: {path} (step {ckpt.step}, D={sizes['D']}{shape}, "
          f"{len(ckpt.vocab)} symbols) on {be.name} {be.device}, {dtype}")  # fmt: skip
    print(f"  text: {text.description}, {len(text.ids):,} characters")
    if text.removed:
        shown = "".join(sorted(text.removed))
        print(f"  left out: {sum(text.removed.values()):,} characters outside the vocabulary "
              f"({len(text.removed)} distinct: {shown!r}), neither fed nor scored")  # fmt: skip
    train = ckpt.config.get("train", {})
    streams, warmup = int(train.get("val_streams", 16)), int(train.get("val_warmup", 100))
    if args.dynamic:
        return _dynamic(args, ckpt, be, params, text.ids, warmup)
    t0 = time.perf_counter()
    bpc, count = validation_score(ckpt.model, params, text.ids, streams=streams, warmup=warmup,
                                  backend=be, dtype=dtype)  # fmt: skip
    if not math.isfinite(bpc):
        raise FloatingPointError(
            f"static: {bpc} bits/char: the checkpoint's weights overflow on this text (NaN or "
            "infinite logits); there is no score to report"
        )
    print(
        f"static: {bpc:.4f} bits/char over {count:,} characters ({streams} streams, "
        f"warm-up {warmup}, as training validates; {time.perf_counter() - t0:.1f} s)"
    )
    return 0


def _candidates(args: argparse.Namespace) -> list[Any]:
    from ..evaluation.dynamic import Update

    lrs = args.lr or (RMS_LR if args.rule == "rms" else SGD_LR)
    decays = args.decay or (RMS_DECAY if args.rule == "rms" else SGD_DECAY)
    return [Update(args.rule, lr, decay, args.eps if args.rule == "rms" else 0.0)
            for decay in decays for lr in lrs]  # fmt: skip


def _rms(args: argparse.Namespace, ckpt: Any, params: dict[str, Any]) -> tuple[Any, str]:
    """The training gradient's RMS for the rms rule, and where it came from."""
    import numpy as np

    from .. import backends
    from ..evaluation.dynamic import gradient_rms, rms_chunks
    from ..evaluation.heldout import run_text
    from ..text import data

    try:
        text, source, fraction = run_text(ckpt.config, max_bytes=args.max_text_size)
    except data.DataError as e:
        raise data.DataError(
            f"--rule rms gathers the gradient's RMS on the run's training text, which is not "
            f"available: {e}. Use --rule sgd, which needs none"
        ) from None
    train_ids, _ = data.split_ids(data.Vocab(ckpt.vocab).encode(text, name=source),
                                  val_fraction=fraction)  # fmt: skip
    batch, chunks = rms_chunks(len(train_ids), seq_len=args.seq_len, batch=64,
                               chunks=args.stats_chunks)  # what the text holds  # fmt: skip
    rms = gradient_rms(params, train_ids, seq_len=args.seq_len, batch=batch, chunks=chunks,
                       model=ckpt.model)  # fmt: skip
    if not bool(np.all(np.isfinite(np.asarray(backends.backend_of(rms).to_numpy(rms))))):
        raise FloatingPointError(
            "--rule rms: the training gradient's RMS is NaN or infinite at the checkpoint's "
            "weights (they overflow on the training text); use --rule sgd"
        )
    asked = f" (of the {args.stats_chunks} asked for: all the text holds)" if (
        chunks < args.stats_chunks) else ""  # fmt: skip
    where = f"{chunks} chunks{asked} (B={batch}, T={args.seq_len}) of {source}'s training split"
    return rms, where


def _dynamic(args: argparse.Namespace, ckpt: Any, be: Any, params: dict[str, Any], ids: Any,
             warmup: int) -> int:  # fmt: skip
    from ..evaluation.dynamic import evaluate_dynamic

    candidates = _candidates(args)
    t0 = time.perf_counter()
    rms, where = _rms(args, ckpt, params) if args.rule == "rms" else (None, "")
    print(
        f"dynamic evaluation (Krause et al. 2018), segments of T={args.seq_len}, "
        f"rule {args.rule}" + (f"; gradient RMS from {where}" if where else "")
    )
    result = evaluate_dynamic(params, ids, candidates, tune_chars=args.tune_chars,
                              seq_len=args.seq_len, warmup=warmup, backend=be, rms=rms,
                              model=ckpt.model)  # fmt: skip
    n = result.tune_chars
    if result.tuning:
        print(f"  settings chosen on the first {n:,} characters, which are not scored:")
        for update, bpc in result.tuning:
            mark = "  <- chosen" if update == result.chosen else ""
            score = f"{bpc:.4f} bits/char" if math.isfinite(bpc) else "diverged (NaN or infinite)"
            print(f"    {update.describe():<40} {score}{mark}")
    elif n:
        print(f"  settings given: {result.chosen.describe()}; the first {n:,} characters "
              "are not scored (as when tuning)")  # fmt: skip
    else:
        print(f"  settings given: {result.chosen.describe()}; every character scored")
    count = result.static.count
    print(
        f"scored: the last {count:,} characters of the text (the first {n + 1:,} are not "
        f"scored), the state warmed on the {min(warmup, n):,} before them"
    )
    sec = result.seconds
    print(f"  static:  {result.static.bpc:.4f} bits/char ({sec['static']:.1f} s)")
    print(
        f"  dynamic: {result.dynamic.bpc:.4f} bits/char ({result.chosen.describe()}; "
        f"{sec['dynamic']:.1f} s)"
    )
    print(f"  {time.perf_counter() - t0:.1f} s in all (tuning {sec['tuning']:.1f} s)")
    return 0
