"""Bit pins (tests/pins/): the same seeds give the same bits on NumPy as the pinned code.

``tests/pins/numpy_bits*.json`` hold sha256 digests of exact results, one file per
environment they were made in (``numpy_bits.json``: an AVX-512 machine,
``numpy_bits_avx2.json``: this project's AVX2 machine, where CI runs; see
tests/pins/make_pins.py for how they were made and what they depend on). The file
made where NumPy, the BLAS kernel, the CPU features and Python match this machine
is used; a case whose bits differ fails, unless it is listed in
:data:`CHANGED_ON_PURPOSE` with the change that moved it. With no matching file
the pins are skipped (the bits depend on the environment).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "pins"))
import make_pins

PIN_FILES = sorted((Path(__file__).parent / "pins").glob("numpy_bits*.json"))
ALL_PINS = [json.loads(f.read_text()) for f in PIN_FILES]
HERE = make_pins.environment()
# the pins made in this environment, else the first file (its cases are then skipped)
PINS = next((p for p in ALL_PINS if not make_pins.comparable(p["environment"], HERE)),
            ALL_PINS[0])  # fmt: skip

# Cases whose arithmetic changed on purpose since the pins were made, and why;
# everything else must match. Empty: the pins were remade from this code (the
# round-one pins, from cb4b3de, are in git history at 97c4689; what changed the
# arithmetic since is listed in benchmarks/NOTES.md).
CHANGED_ON_PURPOSE: dict[str, str] = {}


def _changed(name: str) -> str | None:
    return next((why for prefix, why in CHANGED_ON_PURPOSE.items() if name.startswith(prefix)),
                None)  # fmt: skip


@pytest.mark.parametrize("name", list(PINS["cases"]))
def test_same_bits_as_the_pinned_code(name: str) -> None:
    differ = make_pins.comparable(PINS["environment"], HERE)
    if differ:
        pytest.skip(f"the pins were made where {differ} differ from here")
    why = _changed(name)
    if why is not None:
        pytest.skip(f"changed on purpose: {why}")
    case = PINS["cases"][name]
    got = make_pins.run_case(case["kind"], case["recipe"])
    assert got["digests"] == case["digests"]


def test_the_check_can_fail() -> None:
    """A digest that does not match is reported (so the pins are not vacuous).

    Compared with this machine's own digests, tampered in one entry, so that the
    check runs (and can fail) wherever the pinned environment differs from this one.
    """
    name = "loss_and_grad/softmax_ids/float64"
    case = PINS["cases"][name]
    got = make_pins.run_case(case["kind"], case["recipe"])
    assert make_pins.compare({"cases": {name: got}}, {"cases": {name: got}}) == []
    tampered = {"cases": {name: {**got, "digests": {**got["digests"], "U": "0" * 64}}}}
    assert make_pins.compare(tampered, {"cases": {name: got}}) == [f"{name}: U differs"]
