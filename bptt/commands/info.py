"""``bptt info``: version, backends (usable or not, and why), devices, BLAS."""

from __future__ import annotations

import argparse

HELP = "show the version, which backends are usable here (and why not), devices and BLAS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(_parser=parser)


def _blas() -> list[str]:
    """BLAS libraries and threads: threadpoolctl if importable, else NumPy's build config."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        return [
            f"{i.get('internal_api')} {i.get('version')} ({i.get('user_api')}, "
            f"{i.get('num_threads')} threads): {i.get('filepath')}"
            for i in threadpool_info()
        ]
    import numpy as np

    try:
        config = np.show_config(mode="dicts")
    except TypeError:  # NumPy < 1.25
        return ["(numpy config unavailable; pip install threadpoolctl for details)"]
    deps = config.get("Build Dependencies", {})
    lines = []
    for key in ("blas", "lapack"):
        d = deps.get(key, {})
        if d:
            lines.append(f"{key}: {d.get('name')} {d.get('version', '')} (numpy build config)")
    return lines or ["(unknown)"]


def run(args: argparse.Namespace) -> int:
    import os
    import platform

    import numpy as np

    from .. import __version__, backends

    print(f"bptt {__version__}")
    print(f"python {platform.python_version()} ({platform.platform()}), numpy {np.__version__}")
    print(f"cpu cores: {os.cpu_count()}")
    default, auto = backends.resolve_name(None), backends.resolve_name("auto")
    print(f"default backend: {default}; auto picks {auto}")
    print("backends:")
    for name in backends.NAMES:
        details = backends.describe(name)  # versions, devices, or why not usable
        print(f"  {name}: usable: {details.pop('usable')}")
        for key, value in details.items():
            print(f"    {key}: {value}")
    print("BLAS:")
    for line in _blas():
        print(f"  {line}")
    print(f"NumPy step: {_overlap()}")
    print(f"NumPy batch split: {_split()}")
    return 0


def _split() -> str:
    """When a NumPy step runs each part of the batch on its own thread, in one line."""
    import numpy as np

    from .. import _parallel

    mode, threads = _parallel.split_mode(), _parallel.max_threads()
    line = f"split {mode} (BPTT_SPLIT)"
    if mode == "auto":
        if not _parallel.threads_usable(np):
            return f"{line}: never split here"
        cost, rows = _parallel.SPLIT_FLOAT64_COST, _parallel.MIN_PART_ROWS
        return (
            f"{line}: {threads} parts of >= {rows} rows when B*D^2 >= "
            f"{_parallel.SPLIT_WORK:,} (float64: {cost} x B*D^2), before the overlap"
        )
    return line


def _overlap() -> str:
    """How a NumPy training step uses the cores (bptt._parallel), in one line."""
    from .. import _parallel

    mode, threads = _parallel.overlap_mode(), _parallel.max_threads()
    blas = _parallel._blas() is not None
    line = f"overlap {mode} (BPTT_OVERLAP), {threads} thread(s) (BPTT_THREADS)"
    if mode == "auto":
        if threads < 2 or not blas:
            why = "one thread allowed" if threads < 2 else "pip install threadpoolctl"
            return f"{line}: never overlapped here ({why})"
        lo, hi = _parallel.OVERLAP_WORK
        min_T = 2 * _parallel.MIN_BLOCK_STEPS
        return f"{line}: overlapped when {lo:,} <= B*D^2 < {hi:,} and T >= {min_T}"
    return line
