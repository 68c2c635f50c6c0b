"""The README's NumPy example runs as written, and its CuPy example is the same code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _numpy_block() -> str:
    (numpy_block,) = [b for b in BLOCKS if "import cupy" not in b and 'backend="jax"' not in b
                      and "model.init(" in b and ".vjp" not in b]  # fmt: skip
    return numpy_block


def test_numpy_example_runs_and_learns(capsys) -> None:
    numpy_block = _numpy_block()
    exec(compile(numpy_block, "README.md", "exec"), {})
    loss = float(capsys.readouterr().out.split()[-1])
    assert loss < 0.5  # from log(65) = 4.17: the mapping is learned


def test_cupy_example_mirrors_the_numpy_one() -> None:
    (cupy_block,) = [b for b in BLOCKS if "import cupy" in b]
    assert 'backend="cupy"' in cupy_block
    call = "model.loss_and_grad(params, ids, targets, check_values=step == 0)"
    numpy_block = _numpy_block()
    assert cupy_block.count(call) == numpy_block.count(call) == 1


def test_jax_example_runs_the_jitted_step_and_learns(capsys) -> None:
    pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    (jax_block,) = [b for b in BLOCKS if 'backend="jax"' in b]
    assert "jax.jit(make_train_step(" in jax_block
    exec(compile(jax_block, "README.md", "exec"), {})
    assert float(capsys.readouterr().out.split()[-1]) < 0.5


def test_the_building_block_example_runs_learns_and_converts(capsys) -> None:
    (block,) = [b for b in BLOCKS if "bptt.vjp" in b]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert float(capsys.readouterr().out.split()[-1]) < 0.01  # from 0.918
    assert list(namespace["params"])[:4] == ["U", "W", "U_l0_reverse", "W_l0_reverse"]
