"""``bptt sample``: generate text from a checkpoint, on any backend, seeded."""

from __future__ import annotations

import argparse

from ._args import add_backend_arguments, nonneg_int, positive_float

HELP = "generate text from a trained checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="a checkpoint file, or a run directory (its best.npz, else latest.npz)",
    )
    parser.add_argument(
        "--length", type=nonneg_int, default=500, help="characters to generate (500)"
    )
    parser.add_argument(
        "--temperature", type=positive_float, default=1.0, help="> 0; lower is more conservative"
    )
    parser.add_argument("--prime", default="", help="text to start from (default: a newline)")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="fixes the sample (default 0)")
    add_backend_arguments(parser, default="numpy")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import backends
    from ..text.data import DataError
    from ..text.sample import sample
    from ..train.checkpoint import BEST, CheckpointError, load_checkpoint, resolve_path

    parser = args._parser
    path = Path(args.checkpoint)
    if path.is_dir() and (path / BEST).exists():
        path = path / BEST
    try:
        ckpt = load_checkpoint(resolve_path(path))
        be = backends.get_backend(args.backend, args.device)
        dtype = ckpt.train.dtype
        if not be.supports(dtype):
            dtype = "float32"  # a float64 model samples fine in float32
        params = {k: be.asarray(v, dtype=dtype) for k, v in ckpt.params.items()}
        text = sample(
            ckpt.model,
            params,
            ckpt.vocab,
            length=args.length,
            temperature=args.temperature,
            prime=args.prime,
            seed=args.seed,
        )
    except (CheckpointError, DataError, backends.BackendError, ValueError) as e:
        parser.error(str(e))
    print(args.prime + text)
    return 0
