"""``bptt bench``: time a training step against PyTorch (and JAX); see :mod:`bptt.bench`.

Example (the README's figures)::

    bptt bench --sizes S1,S2,S3 --dtypes float32,float64 --markdown bench.md --json bench.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys

HELP = "time one training step (forward + backward, and the update) against PyTorch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", default="S1,S2,S3", help="S1,S2,S3 or BxTxDxMxC, comma-separated"
    )
    parser.add_argument("--dtypes", default="float32,float64", help="float32,float64")
    parser.add_argument(
        "--backend",
        default="numpy",
        help="backends to run bptt on, comma-separated, or 'all' for every usable one",
    )
    parser.add_argument(
        "--device", default=None, help="device for the backend(s) (default: theirs)"
    )
    parser.add_argument(
        "--torch-device",
        default="auto",
        help="'cpu', 'cuda', 'none' (skip), or auto: the GPU "
        "when the first backend is on one, else cpu",
    )
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX contender")
    parser.add_argument(
        "--reps", type=int, default=7, help="interleaved blocks per contender (>= 7)"
    )
    parser.add_argument(
        "--pause", type=float, default=0.1, help="seconds of rest before each block"
    )
    parser.add_argument(
        "--min-block", type=float, default=0.2, help="seconds per timed block, at least"
    )
    parser.add_argument(
        "--guard",
        type=float,
        default=0.1,
        help="retry a block if other processes used more than this fraction of a core "
        "meanwhile (Linux; 0 turns it off)",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's malloc thresholds (by default raised for every contender: "
        "bptt.malloc.tune_malloc)",
    )
    parser.add_argument("--json", metavar="FILE", help="write every row and sample as JSON")
    parser.add_argument(
        "--markdown", metavar="FILE", help="write the Markdown table for the README"
    )


def _backends(text: str, device: str | None) -> list[tuple[str, object]]:
    from bptt import backends

    if text == "all":
        return [(s.name, None) for s in backends.list_backends() if s.usable]
    return [(backends.resolve_name(name), device) for name in text.split(",")]


def _torch_device(choice: str, first: tuple[str, object]) -> str | None:
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    from bptt import backends

    be = backends.get_backend(*first)
    on_gpu = be.name == "cupy" or (be.name == "torch" and be.device.type == "cuda")
    return "cuda" if on_gpu else "cpu"


def run(args: argparse.Namespace) -> int:
    from bptt import bench
    from bptt.malloc import tune_malloc

    sizes = args.sizes.split(",")
    for s in sizes:
        bench.parse_size(s)
    dtypes = args.dtypes.split(",")
    chosen = _backends(args.backend, args.device)
    torch_device = _torch_device(args.torch_device, chosen[0])
    meta = bench.machine_info()
    if torch_device is not None:
        try:
            import torch

            torch.set_num_threads(meta["blas_threads"])  # = the BLAS threads NumPy uses
            meta["torch_threads"] = torch.get_num_threads()
        except ImportError:
            torch_device = None
    meta.update(
        date=datetime.date.today().isoformat(),
        command="bptt bench "
        + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
        reps=args.reps,
        malloc_tuned=False if args.default_malloc else tune_malloc(),
        threads=f"BLAS {meta['blas_threads']}, bptt elementwise {meta['bptt_threads']}, "
        f"torch {meta.get('torch_threads', '-')}",
    )
    print(
        f"# {meta['machine']}; BLAS {meta['blas']}; threads {meta['threads']}; "
        f"malloc {bench._malloc(meta)}",
        flush=True,
    )
    print(bench.HEADER, flush=True)
    rows = bench.run_benchmark(
        sizes,
        dtypes,
        chosen,
        torch_device=torch_device,
        with_jax=not args.no_jax,
        reps=args.reps,
        pause=args.pause,
        min_block=args.min_block,
        guard=args.guard,
        log=lambda line: print(line, flush=True),
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(bench.format_markdown(rows, meta))
    return 0
