"""Time one training step of bptt against PyTorch and JAX, interleaved in one process.

    python benchmarks/bench_step.py --sizes S1,S2,S3 --dtypes float32,float64 \\
        --markdown bench.md --json bench.json

(``bptt bench ARGS`` runs this script from a source checkout.) Contenders
(``bench_cases.py``): bptt on NumPy (its ``auto`` schedule unless ``--schedule``
or ``$BPTT_SCHEDULE`` names one) and on any other ``--backend``; the NumPy-only
yardstick; torch (autograd, CPU, or CUDA when bptt runs on a GPU and torch can);
JAX's hand-written ``lax.scan`` under ``jit``; and bptt's own code under
``jax.jit`` (its recurrences as ``lax.scan``; ``--jax-unrolled`` adds the unrolled
loop). Timing (``bench_timing.py``): after two warm-up calls each, blocks
of about ``--min-block`` seconds, A B A B ..., a pause and one untimed call
before each, blocks overlapping other processes' work retried (``--guard``).

Columns: the median of the blocks' ms per call, the spread (interquartile range
over the median), the ratio to torch, characters (T*B tokens) per second, the
fraction of the FLOP floor -- 6 T B D (D + C) GEMM FLOPs over the rate of a large
square matmul measured in the same run: the best of 7 at the start ("floor"), and
the median of that matmul timed as one more contender among the blocks
("floor@t", the same minutes as the steps, so that a slow phase of a shared
machine lowers both) -- the peak memory a step allocates, the update (clip +
Adam) in ms, and the first call in ms (JAX's trace and compile, outside the
medians).

glibc's malloc is set for the whole process as ``bptt train --tune-malloc`` sets it
(``--malloc``): large blocks kept when a JAX contender runs, thresholds raised otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import shlex
import sys
from collections.abc import Callable
from typing import Any

from bench_cases import (
    MALLOC_MODES,
    SIZES,
    Size,
    bptt_case,
    gemm_case,
    gemm_rate,
    jax_bptt_case,
    jax_case,
    numpy_variant_case,
    parse_size,
    resolve_torch_device,
    set_malloc,
    torch_case,
)
from bench_report import HEADER, environment, format_markdown, format_row, header
from bench_timing import Case, stats, time_blocks

from bptt import backends
from bptt.cli._args import check_output_path, nonneg_float, positive_int
from bptt.execution import schedules

__all__ = ["main", "run_benchmark"]


def _optional(build: Callable[[], Case]) -> Case | str:
    """An optional contender, or why it did not run (not installed, or its error)."""
    try:
        return build()
    except ImportError:
        return "not installed"
    except Exception as exc:  # a contender that fails is reported, not fatal
        text = str(exc).strip().splitlines()
        return f"failed: {type(exc).__name__}: {text[0] if text else ''}"[:160]


def run_benchmark(
    sizes: list[str],
    dtypes: list[str],
    backends_: list[tuple[str, Any]],
    *,
    schedule: str | None = None,
    torch_device: str | None = "cpu",
    with_jax: bool = True,
    jax_unrolled: bool = False,
    reps: int = 7,
    pause: float = 0.1,
    min_block: float = 0.2,
    gemm_n: int = 2048,
    guard: float = 0.0,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict[str, Any]]:
    """One row per (size, dtype, contender); see the module docstring for the columns."""
    rows: list[dict[str, Any]] = []
    for dtype in dtypes:
        rate = gemm_rate(*backends_[0], dtype, n=gemm_n)
        log(f"# {dtype}: large square GEMM {rate / 1e9:.1f} GFLOP/s")
        for label in sizes:
            name, size = parse_size(label)
            cases = [bptt_case(size, dtype, b, d, schedule=schedule) for b, d in backends_]
            if any(b == "numpy" for b, _ in backends_):
                cases.append(numpy_variant_case(size, dtype))
            optional: dict[str, Callable[[], Case]] = {}
            if torch_device:
                optional["torch"] = functools.partial(torch_case, size, dtype, torch_device)
            if with_jax:
                optional["jax"] = functools.partial(jax_case, size, dtype)
                optional["bptt[jax.jit]"] = functools.partial(jax_bptt_case, size, dtype)
                if jax_unrolled:
                    optional["bptt[jax.jit,unrolled]"] = functools.partial(
                        jax_bptt_case, size, dtype, schedule="unrolled"
                    )
            missing = {}
            for key, build in optional.items():
                got = _optional(build)
                if isinstance(got, str):
                    missing[key] = got
                else:
                    cases.append(got)
            gemm = gemm_case(*backends_[0], dtype, gemm_n)
            time_blocks([*cases, gemm], reps=reps, pause=pause, min_block=min_block, guard=guard)
            rows += _rows(name, size, dtype, cases, gemm, rate, gemm_n, log)
            for key, why in missing.items():
                rows.append({"size": name, "dtype": dtype, "impl": key, "status": why})
                log(format_row(rows[-1]))
    return rows


def _rows(
    name: str,
    size: Size,
    dtype: str,
    cases: list[Case],
    gemm: Case,
    rate: float,
    gemm_n: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    step = {c.name: stats(c.samples) for c in cases}
    ref = next((step[c.name] for c in cases if c.name.startswith("torch")), None)
    rate_now = 2 * gemm_n**3 / (stats(gemm.samples)["median"] / 1e3)  # type: ignore[index]
    rows = []
    for case in cases:
        s = step[case.name]
        assert s is not None
        ms = s["median"]
        peak = case.peak_bytes()
        rows.append(
            {
                "size": name,
                **size._asdict(),
                "dtype": dtype,
                "impl": case.name,
                "schedule": case.schedule,
                "ms_per_step": ms,
                "iqr_pct": s["iqr_pct"],
                "samples_ms": case.samples,
                "vs_torch": ms / ref["median"] if ref else None,
                "chars_per_s": size.T * size.B / (ms / 1e3),
                "floor_fraction": size.flops / (ms / 1e3) / rate,
                "gemm_gflops": rate / 1e9,
                "floor_fraction_same_time": size.flops / (ms / 1e3) / rate_now,
                "gemm_gflops_same_time": rate_now / 1e9,
                "peak_mib": None if peak is None else peak / 2**20,
                "update_ms": (stats(case.update_samples) or {}).get("median"),
                "first_call_ms": None if case.first_call_s is None else case.first_call_s * 1e3,
                "calls_per_block": case.calls_per_block,
                "retried_blocks": case.retries,
                "contended_blocks": case.contended,
            }
        )
        log(format_row(rows[-1]))
    return rows


DTYPES = ("float32", "float64")


def _check_options(args: argparse.Namespace) -> None:
    """ValueError naming the first option that cannot run, before any timing."""
    for dtype in args.dtypes.split(","):
        if dtype not in DTYPES:
            raise ValueError(
                f"--dtypes: expected a comma-separated list of {list(DTYPES)}; got {dtype!r}"
            )
    choice = args.torch_device
    if choice not in ("auto", "cpu", "none", "cuda") and not (
        choice.startswith("cuda:") and choice[5:].isdigit()
    ):
        raise ValueError(
            f"--torch-device: expected auto, cpu, cuda, cuda:N or none; got {choice!r}"
        )
    check_output_path(args.json, "--json")
    check_output_path(args.markdown, "--markdown")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_step.py", description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--sizes", default="S1,S2,S3", help=f"{','.join(SIZES)} or BxTxDxMxC, comma-separated")
    add("--dtypes", default="float32,float64", help="float32,float64")
    add(
        "--backend",
        default="numpy",
        help="backends to run bptt on, comma-separated, or 'all' for every usable one",
    )
    add("--device", default=None, help="device for the backend(s) (default: theirs)")
    add(
        "--schedule",
        choices=schedules.SCHEDULES,
        default=None,
        help=f"bptt's schedule (default: ${schedules.ENV_VAR}, else auto)",
    )
    add(
        "--torch-device",
        default="auto",
        help="'cpu', 'cuda', 'none' (skip), or auto: CUDA when the first backend is on a GPU "
        "and torch can use it, else cpu",
    )
    add("--no-jax", action="store_true", help="skip the JAX contenders")
    add(
        "--jax-unrolled",
        action="store_true",
        help="also bptt's unrolled loop under jax.jit (compile time grows with T)",
    )
    add("--reps", type=positive_int, default=7, help="interleaved blocks per contender (7+)")
    add("--pause", type=nonneg_float, default=0.1, help="seconds of rest before each block")
    add("--min-block", type=nonneg_float, default=0.2, help="seconds per timed block, at least")
    add("--gemm-n", type=positive_int, default=2048, help="side of the square matmul of the floor")
    add(
        "--guard",
        type=nonneg_float,
        default=0.1,
        help="retry a block if other processes used more than this fraction of a core "
        "meanwhile (Linux; 0 turns it off)",
    )
    add(
        "--malloc",
        choices=MALLOC,
        default="auto",
        help="glibc's malloc for every contender: keep (bptt.host.malloc.keep_large_blocks: "
        "blocks of any size kept, as bptt train --tune-malloc runs JAX), tune (tune_malloc: "
        "thresholds raised, as it runs NumPy), default (glibc's); auto: keep when a JAX "
        "contender runs, else tune",
    )
    add("--default-malloc", action="store_true", help="the same as --malloc default")
    add("--json", metavar="FILE", help="write every row and sample as JSON")
    add("--markdown", metavar="FILE", help="write the Markdown table for the README")
    return parser


def _backends(text: str, device: str | None) -> list[tuple[str, Any]]:
    if text == "all":
        return [(s.name, None) for s in backends.list_backends() if s.usable]
    return [(backends.resolve_name(name), device) for name in text.split(",")]


def _on_gpu(be: backends.Backend) -> bool:
    if be.name == "cupy":
        return True
    if be.name == "torch":
        return be.device.type == "cuda"
    return be.name == "jax" and getattr(be.device, "platform", "cpu") == "gpu"


def _op_counts(sizes: list[str]) -> str:
    """The training step's kernels per step at each size's T (benchmarks/op_count.py)."""
    import op_count

    counts = []
    for s in sizes:
        T = parse_size(s)[1].T
        counts.append(f"{s} (T={T}) {op_count.count(T)['kernels']}")
    return "training step kernels (counting proxy, 6 T + 62): " + ", ".join(counts)


MALLOC = ("auto", *MALLOC_MODES)


def _set_malloc(args: argparse.Namespace) -> tuple[str, bool]:
    """The malloc setting ``--malloc`` names, applied; call it before JAX starts threads.

    XLA allocates a jitted step's temporaries as one block per call, above glibc's
    32 MiB cap on the mmap threshold from S2 on: under ``tune`` that block is mapped and
    faulted in afresh at every call (S2: 43.4-43.6 ms kept, 54.7-57.4 ms tuned; NumPy and
    torch the same under both; benchmarks/NOTES.md, round 7d).
    """
    mode = "default" if args.default_malloc else args.malloc
    if mode == "auto":
        jax_runs = not args.no_jax and importlib.util.find_spec("jax") is not None
        jax_runs |= args.backend == "all" or "jax" in args.backend.split(",")
        mode = "keep" if jax_runs else "tune"
    return mode, set_malloc(mode)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    malloc_mode, malloc_tuned = _set_malloc(args)
    sizes, dtypes = args.sizes.split(","), args.dtypes.split(",")
    try:
        for s in sizes:
            parse_size(s)
        _check_options(args)
        chosen = _backends(args.backend, args.device)
        first = backends.get_backend(*chosen[0])
        for name, device in chosen[1:]:
            backends.get_backend(name, device)
    except ValueError as exc:  # BackendError is a ValueError
        parser.error(str(exc))
    torch_device, note = resolve_torch_device(args.torch_device, _on_gpu(first))
    meta = environment()
    meta["notes"] += [note] if note else []
    meta["notes"].append(_op_counts(sizes))
    if torch_device is not None:
        import torch

        torch.set_num_threads(meta["blas_threads"])  # = the BLAS threads NumPy uses
        meta.update(torch=torch.__version__, torch_device=torch_device)
        meta["torch_threads"] = torch.get_num_threads()
    if not args.no_jax:
        try:
            import jax

            meta.update(jax=jax.__version__, jax_device=str(jax.devices()[0]))
        except ImportError:
            pass
    command = shlex.join(sys.argv[1:] if argv is None else argv)
    meta.update(
        date=datetime.datetime.now().isoformat(timespec="minutes"),
        command=f"python benchmarks/bench_step.py {command}".strip(),
        reps=args.reps,
        malloc=malloc_mode,
        malloc_tuned=malloc_tuned,
    )
    for line in [*header(meta), HEADER]:
        print(line, flush=True)
    rows = run_benchmark(
        sizes,
        dtypes,
        chosen,
        schedule=args.schedule,
        torch_device=torch_device,
        with_jax=not args.no_jax,
        jax_unrolled=args.jax_unrolled,
        reps=args.reps,
        pause=args.pause,
        min_block=args.min_block,
        gemm_n=args.gemm_n,
        guard=args.guard,
        log=lambda line: print(line, flush=True),
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
