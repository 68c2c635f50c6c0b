"""The layering of docs/architecture.md, held by reading each module's imports.

- The math (model, cells, layers, heads, step, flat, scan) imports no execution policy,
  no training, no command line, no backend selection and not the public API (rnn,
  functional): only array-API helpers and each other. The numerics beside it (random,
  finite_diff) may also ask the device layer (backends) which library an array belongs to.
- Nothing under bptt/ imports torch, jax or cupy at module level; only backends/
  (lazily) and the compiled-step module (inside the functions that need them).
- JAX is imported (inside functions) by its execution layer only: bptt/execution/jax_exec/ and
  the compiled-step module; no JAX branch in the math.
- No module calls a private name of another bptt module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bptt"
MATH = (
    "model",
    "cells",
    "gru",
    "lstm",
    "gates",
    "layers",
    "heads",
    "step",
    "flat",
    "scan",
    "remat",
    "remat_layerwise",
    "remat_scan",
)  # pure math
NUMERICS = ("random", "finite_diff")  # may ask backends which library they run on
POLICY_AND_ABOVE = ("numpy_exec", "jax_exec", "schedules", "train", "commands", "cli", "api",
                    "checks", "backends", "optim", "checkpoint", "data", "validation", "sample",
                    "limits",
                    "rundir", "evaluation",
                    "dynamic_eval", "pullback", "interop", "distributed", "allreduce",
                    "rnn", "functional")  # fmt: skip
LIBRARIES = ("torch", "jax", "jaxlib", "cupy")


def _imports(path: Path, *, top_level_only: bool, root: Path = ROOT) -> list[tuple[str, list[str]]]:
    """(module, names) for each import; relative imports resolved inside bptt."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level:
                package = path.relative_to(root).with_suffix("").parts[: -node.level]
                module = ".".join((*package, node.module or ""))
                found.append((module.rstrip("."), names))
            else:
                found.append((node.module or "", names))
    return found


def _bptt_modules(module: str, names: list[str]) -> set[str]:
    """The bptt modules an import reaches: ``bptt.x`` and ``from bptt import x``."""
    parts = module.split(".")
    if parts[0] != "bptt":
        return set()
    if len(parts) > 1:
        return {parts[1]}
    return set(names)


@pytest.mark.parametrize("name", MATH + NUMERICS)
def test_the_math_imports_no_policy(name: str) -> None:
    reached = set()
    for module, names in _imports(PACKAGE / f"{name}.py", top_level_only=False):
        reached |= _bptt_modules(module, names)
        assert module.split(".")[0] not in LIBRARIES, (name, module)
    allowed = {"backends"} if name in NUMERICS else set()
    assert not reached & (set(POLICY_AND_ABOVE) - allowed), (name, reached)


def test_no_array_library_imported_at_module_level() -> None:
    for path in PACKAGE.rglob("*.py"):
        for module, _ in _imports(path, top_level_only=True):
            assert module.split(".")[0] not in LIBRARIES, (path, module)


JAX_USERS = {PACKAGE / "train" / "compiled.py", *(PACKAGE / "jax_exec").glob("*.py")}


def test_jax_is_imported_by_its_execution_layer_only() -> None:
    users = set()
    for path in PACKAGE.rglob("*.py"):
        if any(m.split(".")[0] in ("jax", "jaxlib") for m, _ in
               _imports(path, top_level_only=False)):  # fmt: skip
            users.add(path)
    assert users and users <= JAX_USERS, sorted(str(p) for p in users - JAX_USERS)


def test_no_private_names_of_other_modules() -> None:
    """``from .x import _y`` or ``x._y(...)`` across modules is a seam that leaks."""
    for path in PACKAGE.rglob("*.py"):
        for module, names in _imports(path, top_level_only=False):
            if module.startswith("bptt") or module.startswith("."):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                assert not private, (path, module, private)


def test_the_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bptt" / "model.py"
    bad.parent.mkdir()
    bad.write_text("from .numpy_exec import policy\nimport torch\n")
    (policy, names), (library, _) = _imports(bad, top_level_only=False, root=tmp_path)
    assert _bptt_modules(policy, names) == {"numpy_exec"} and library == "torch"


def test_the_checkpoint_code_lives_with_the_training_job() -> None:
    """bptt/train/checkpoint.py imports from the job only what is below it (the options,
    the run state, the step); bptt/train/checkpoint.py only re-exports it; the run directory
    (below the job) imports it only inside the functions that read a checkpoint."""
    train = {m.split(".")[2] for m, _ in _imports(PACKAGE / "train" / "checkpoint.py",
             top_level_only=False) if m.startswith("bptt.train.")}  # fmt: skip
    assert train == {"config", "state", "step"}, train
    shim = _imports(PACKAGE / "checkpoint.py", top_level_only=True)
    assert {m for m, _ in shim} == {"__future__", "bptt.train.checkpoint"}, shim
    rundir = {m for m, _ in _imports(PACKAGE / "rundir.py", top_level_only=True)}
    assert not any(m.startswith("bptt.train") for m in rundir), rundir
