"""What ``bench_step.py`` prints and writes: the environment header, the table, Markdown.

The environment comes from public names only: the BLAS libraries and their
threads (threadpoolctl), bptt's NumPy schedule (:func:`bptt.execution.schedules.resolve_name`,
``$BPTT_SCHEDULE``) and thread cap (:func:`bptt.execution.numpy_exec.threads.max_threads`,
``$BPTT_THREADS``), and the versions and devices of torch and JAX when they run.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

import bptt
from bptt.execution import schedules
from bptt.execution.numpy_exec import policy, threads

__all__ = ["HEADER", "environment", "format_markdown", "format_row", "format_table", "header"]


def _blas() -> tuple[str, int]:
    """The BLAS libraries with their versions, and the threads they use."""
    n = os.cpu_count() or 1
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)", n
    libs = [i for i in threadpool_info() if i["user_api"] == "blas"]
    names = ", ".join(
        f"{i['internal_api']} {i.get('version')}"
        + (f" ({i['architecture']} kernels)" if i.get("architecture") else "")
        for i in libs
    )
    return names or "unknown", max((i["num_threads"] for i in libs), default=n)


def _cpu_model() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return model


def _from_env(name: str) -> str:
    value = os.environ.get(name)
    return f"{name}={value}" if value else f"{name} unset"


def environment() -> dict[str, Any]:
    """The machine, BLAS, and how bptt runs a NumPy step here, for the record."""
    blas, blas_threads = _blas()
    return {
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores",
        "blas": blas,
        "blas_threads": blas_threads,
        "numpy": np.__version__,
        "bptt": bptt.__version__,
        "bptt_schedule": schedules.resolve_name(None),
        "bptt_schedule_source": _from_env(schedules.ENV_VAR),
        "bptt_threads": threads.max_threads(),
        "bptt_threads_source": _from_env("BPTT_THREADS"),
        "bptt_threads_usable": policy.threads_usable(),
        "notes": [],
    }


def _malloc(meta: dict[str, Any]) -> str:
    if not meta.get("malloc_tuned"):
        return "defaults"
    if meta.get("malloc") == "keep":
        return "large blocks kept (bptt.host.malloc.keep_large_blocks)"
    return "thresholds raised (bptt.host.malloc.tune_malloc)"


def _threads(meta: dict[str, Any]) -> str:
    usable = "" if meta["bptt_threads_usable"] else ", threaded schedules off"
    return (
        f"BLAS {meta['blas_threads']}, bptt up to {meta['bptt_threads']} "
        f"({meta['bptt_threads_source']}{usable}), torch {meta.get('torch_threads', '-')}"
    )


def _schedule(meta: dict[str, Any]) -> str:
    return f"{meta['bptt_schedule']} ({meta['bptt_schedule_source']})"


def _libraries(meta: dict[str, Any]) -> str:
    parts = [f"numpy {meta['numpy']}", f"bptt {meta['bptt']}"]
    if "torch" in meta:
        parts.append(f"torch {meta['torch']} on {meta['torch_device']}")
    if "jax" in meta:
        parts.append(f"jax {meta['jax']} on {meta['jax_device']} (x64 inside its calls only)")
    return ", ".join(parts)


def header(meta: dict[str, Any]) -> list[str]:
    """The lines printed above the table, each starting with '#'."""
    lines = [
        f"# {meta['machine']}; BLAS {meta['blas']}; malloc {_malloc(meta)}",
        f"# threads: {_threads(meta)}; bptt NumPy schedule: {_schedule(meta)}",
        f"# {_libraries(meta)}",
    ]
    return lines + [f"# note: {note}" for note in meta["notes"]]


HEADER = (
    "size dtype    impl          sched    ms/step  spread  vs torch    chars/s  floor floor@t"
    "  peak MiB  update ms  1st call ms"
)


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_row(r: dict[str, Any]) -> str:
    """One line of the stdout table (a contender that did not run: its reason)."""
    if "status" in r:
        return f"{r['size']:4} {r['dtype']:8} {r['impl']:13} {r['status']}"
    flag = " (contended)" if r.get("contended_blocks") else ""
    return (
        f"{r['size']:4} {r['dtype']:8} {r['impl']:13} {r['schedule'] or '-':8} "
        f"{r['ms_per_step']:8.2f} {r['iqr_pct']:6.1f}% {_f(r['vs_torch'], '8.2f'):>9} "
        f"{r['chars_per_s']:10.0f} {r['floor_fraction']:6.2f} "
        f"{r['floor_fraction_same_time']:7.2f} {_f(r['peak_mib'], '9.1f'):>9} "
        f"{_f(r['update_ms'], '10.3f'):>10} {_f(r['first_call_ms'], '12.1f'):>12}{flag}"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    """The stdout table: :data:`HEADER` and one line per row."""
    return "\n".join([HEADER, *(format_row(r) for r in rows)])


COLUMNS = (
    "| size | dtype | implementation | schedule | ms/step | spread | vs torch | chars/s "
    "| FLOP floor | floor@t | peak MiB | update ms | 1st call ms |"
)


def format_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """A Markdown table with the date, the machine and the command, for the README."""
    lines = [
        f"Measured {meta['date']} on {meta['machine']}; BLAS: {meta['blas']}; "
        f"threads: {_threads(meta)}; malloc: {_malloc(meta)}.",
        f"bptt's NumPy schedule: {_schedule(meta)}; {_libraries(meta)}.",
        *(f"Note: {note}." for note in meta["notes"]),
        f"Command: `{meta['command']}`. Medians of {meta['reps']} interleaved blocks; "
        "1st call: the first call, compilation included (JAX), outside the medians.",
        "",
        COLUMNS,
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        if "status" in r:
            cells = [r["size"], r["dtype"], r["impl"], r["status"]]
            lines.append("| " + " | ".join(cells) + " |" + " |" * 9)
            continue
        lines.append(
            f"| {r['size']} | {r['dtype']} | {r['impl']} | {r['schedule'] or '-'} "
            f"| {r['ms_per_step']:.2f} | {r['iqr_pct']:.1f}% | {_f(r['vs_torch'], '.2f')} "
            f"| {r['chars_per_s']:,.0f} | {r['floor_fraction']:.2f} "
            f"| {r['floor_fraction_same_time']:.2f} | {_f(r['peak_mib'], '.1f')} "
            f"| {_f(r['update_ms'], '.3f')} | {_f(r['first_call_ms'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"
