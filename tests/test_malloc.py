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
