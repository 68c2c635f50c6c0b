"""The code stays formatted and lint-clean (ruff, configured in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def find_ruff() -> str | None:
    """The ruff executable beside the running Python (a virtualenv's bin/ or Scripts/,
    whether or not it is activated), else the first on PATH; None without one."""
    beside = shutil.which("ruff", path=str(Path(sys.executable).parent))
    return beside or shutil.which("ruff")


@pytest.mark.parametrize(
    "args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"]
)
def test_ruff(args: list[str]) -> None:
    ruff = find_ruff()
    if ruff is None:
        pytest.skip(
            f"ruff not found beside {sys.executable} nor on PATH; "
            "it is part of the test extra: pip install -e '.[test]'"
        )
    out = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
