"""The README: short, its first example runs on every backend by changing one line, and
its main job's three commands run (small), as written.

tests/test_docs.py runs every other block of the README and the docs pages.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
BACKEND_LINE = 'be = bptt.backends.get_backend("numpy")'


def _first_example() -> str:
    (block,) = [code for lang, code in BLOCKS if lang == "python"]
    return block


def _on(backend: str) -> str:
    block = _first_example()
    assert block.count(BACKEND_LINE) == 1
    return block.replace(BACKEND_LINE, BACKEND_LINE.replace('"numpy"', f'"{backend}"'))


def test_the_readme_is_short_and_starts_with_what_a_user_needs() -> None:
    assert len(README.encode()) <= 15_000
    heads = re.findall(r"^## (.+)$", README, flags=re.M)
    assert heads[:3] == ["Install", "A first example", "The main job in three commands"]
    assert "## Run the tests" in README  # .ci/run runs its commands
    for dated in ("this round", "previous release", "2026-"):
        assert dated not in README, f"{dated!r}: results live in docs/, with their dates"


def test_the_readme_test_commands_are_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    (tests,) = [code for lang, code in BLOCKS if "pytest" in code]
    assert (
        "pip install -e '.[test]' && pytest" in tests and "pip install -e '.[test]' && pytest" in ci
    )


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_first_example_runs_and_learns_with_one_line_changed(backend, capsys, tmp_path) -> None:
    if backend != "numpy":
        pytest.importorskip(backend, reason=f"{backend} is not installed (it is optional)")
    code = _on(backend)
    changed = [
        a for a, b in zip(code.splitlines(), _first_example().splitlines(), strict=True) if a != b
    ]
    assert len(changed) == (backend != "numpy")  # the one line that changes
    exec(compile(code, f"README.md (on {backend})", "exec"), {})
    assert float(capsys.readouterr().out.split()[-1]) < 0.5  # from log(65) = 4.17


def test_the_readme_names_the_line_that_changes() -> None:
    assert '`get_backend("cupy")`' in README
    assert "model.init(" in _first_example() and "bptt.optim." in _first_example()
    assert "model.loss_and_grad(" in _first_example()


def test_the_main_job_runs_as_written_with_fewer_steps(tmp_path: Path) -> None:
    (job,) = [code for lang, code in BLOCKS if lang == "bash" and "bptt train" in code]
    lines = [line.split("#")[0].strip() for line in job.strip().splitlines()]
    assert [line.split()[:2] for line in lines] == [
        ["bptt", "train"],
        ["bptt", "sample"],
        ["bptt", "evaluate"],
    ]
    small = " --backend numpy --steps 20 --hidden 32 --batch 8 --seq-len 25"
    lines[0] += small
    lines[1] = lines[1].replace("--length 500", "--length 50")
    bin_dir = Path(sys.executable).parent
    for line in lines:
        argv = [str(bin_dir / "bptt"), *line.split()[1:]]
        out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{line}\n{out.stdout[-1500:]}{out.stderr[-1500:]}"
    assert "bits/char" in out.stdout
