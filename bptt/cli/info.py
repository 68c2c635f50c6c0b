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
    print(f"NumPy schedule: {_schedule()}")
    print(
        "training step: 6 T + 62 array operations that launch kernels at the defaults "
        "(Adam, clipping, no dropout; 662 at T = 100), no host sync, no host-to-device "
        "copy (held by tests/test_sync_free.py; counted by python benchmarks/op_count.py)"
    )
    from ..math import gru, lstm

    for name, cell in (("GRU", gru), ("LSTM", lstm)):
        k = cell.KERNELS_PER_STEP
        print(f"  {name} cell: {k['forward']} + {k['backward']} per time step (forward, "
              "backward step bodies; held by the same tests)")  # fmt: skip
    return 0


def _schedule() -> str:
    """How ``auto`` runs a NumPy step on this machine (bptt.execution.numpy_exec), in one line."""
    from ..execution.numpy_exec import policy, threads
    from ..execution.schedules import ENV_VAR, resolve_name

    name, n = resolve_name(None), threads.max_threads()
    line = f"{name} ({ENV_VAR}), {n} thread(s) (BPTT_THREADS)"
    if name != "auto":
        return line
    if not policy.threads_usable():
        why = "one thread allowed" if n < 2 else "pip install threadpoolctl"
        return f"{line}: always single here ({why})"
    lo, hi = policy.OVERLAP_WORK
    return (
        f"{line}: split when B*D^2 >= {policy.SPLIT_WORK:,} (float64: "
        f"{policy.SPLIT_FLOAT64_COST} x B*D^2) into parts of >= {policy.MIN_PART_ROWS} rows, "
        f"else overlapped when {lo:,} <= B*D^2 < {hi:,} and T >= {2 * policy.MIN_BLOCK_STEPS}, "
        "else single"
    )
