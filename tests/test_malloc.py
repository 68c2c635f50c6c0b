"""bptt.host.malloc: the memory a step frees is kept for the next (glibc)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

FAULTS = """
import json, resource, sys
import numpy as np
import bptt
from bptt.host.malloc import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tuned" else None
params = bptt.init_params(65, 100, 65, dtype="float32", seed=0)  # S1
rng = np.random.default_rng(0)
x, y = rng.integers(0, 65, (25, 32)), rng.integers(0, 65, (25, 32))
for _ in range(5):
    bptt.loss_and_grad(params, x, y, check_values=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    bptt.loss_and_grad(params, x, y, check_values=False)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _faults_per_step(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt's thresholds are glibc's")
def test_tuned_steps_stop_faulting_pages_in() -> None:
    """Fresh processes, S1 steps: with glibc's defaults each step faults in pages the
    last one handed back (150-370 here); tuned, none."""
    default, tuned = _faults_per_step("default"), _faults_per_step("tuned")
    assert tuned["tuned"] is True
    assert tuned["faults"] < 2, (default, tuned)
    assert default["faults"] > 20 * max(tuned["faults"], 1), (default, tuned)


def test_tune_malloc_is_idempotent() -> None:
    from bptt.host.malloc import tune_malloc

    first = tune_malloc()
    assert tune_malloc() is first
    assert first is GLIBC


LARGE = """
import ctypes, ctypes.util, json, resource, sys, threading
from bptt.host.malloc import keep_large_blocks, tune_malloc
kept = keep_large_blocks() if sys.argv[1] == "kept" else tune_malloc()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []

def steps():  # 40 MB a step from malloc on a thread, as XLA's temporaries (NumPy's
    for _ in range(8):  # own large arrays ask for huge pages)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(40 << 20)
        ctypes.memset(block, 1, 40 << 20)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

worker = threading.Thread(target=steps)
worker.start()
worker.join()
print(json.dumps({"kept": kept, "faults": sorted(faults[2:])[len(faults[2:]) // 2]}))
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt's thresholds are glibc's")
def test_kept_large_blocks_stop_faulting_pages_in() -> None:
    """A 40 MB block a step (above glibc's 32 MiB cap on the mmap threshold, as XLA's
    temporaries at S2): tuned alone, each step maps it afresh (about 10,000 faults);
    kept, the median step faults none."""
    runs = {}
    for mode in ("tuned", "kept"):
        out = subprocess.run([sys.executable, "-c", LARGE, mode], capture_output=True,
                             text=True, check=True)  # fmt: skip
        runs[mode] = json.loads(out.stdout)
    assert runs["kept"]["kept"] is True
    assert runs["kept"]["faults"] < 100, runs
    assert runs["tuned"]["faults"] > 5000, runs
