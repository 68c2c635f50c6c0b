"""The layering of docs/architecture.md, held by reading each module's imports.

- bptt/ is a few subpackages, one per layer (``LAYERS``); a module imports only its own
  layer and the layers that layer may import, so the layers form a DAG, and no chain of
  imports between modules (lazy ones included) comes back to where it started.
- Nothing under bptt/ imports torch, jax or cupy at module level; only backends/
  (lazily) and the compiled-step module (inside the functions that need them).
- JAX is imported (inside functions) by its execution layer only: bptt/execution/jax_exec/
  and the compiled-step module; no JAX branch in the math.
- No module calls a private name of another bptt module.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bptt"
BELOW_TRAIN = {"host", "backends", "math", "numerics", "execution", "optim", "api", "text"}
# each layer (a subpackage of bptt, or a top-level module) and the layers it may import
LAYERS: dict[str, set[str]] = {
    "_startup": set(),
    "_version": set(),
    "host": set(),  # bounds on files and memory, the allocator, plots: host-side only
    "backends": set(),  # which array libraries are usable, devices, transfers
    "math": set(),  # the equations: array-API code of xp only
    "numerics": {"math", "backends"},  # the counter-based generator, finite differences
    "execution": {"math", "numerics", "backends"},  # schedules, numpy_exec, jax_exec, compile
    "optim": {"backends"},
    "api": {"math", "numerics", "execution", "backends"},  # bptt.RNN and its calls
    "text": {"host", "backends", "math", "execution"},  # vocabularies, sampling, scoring
    "train": BELOW_TRAIN
    | {"_version"},  # the job: options, step, loop, checkpoints, run directory, MPI
    "evaluation": BELOW_TRAIN | {"train"},  # held-out text, dynamic evaluation, diagnostics
    "cli": BELOW_TRAIN | {"train", "evaluation", "_startup", "_version"},
    "__init__": {"_startup", "_version", "backends", "api", "optim"},
    "__main__": {"cli"},
}
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "backends":
        parts.insert(0, "bptt")
    if parts[-1] == "__init__" and len(parts) > 2:
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    parts = name.split(".")
    base = ROOT / "backends" if parts[:2] == ["bptt", "backends"] else ROOT / parts[0]
    rest = parts[2:] if parts[:2] == ["bptt", "backends"] else parts[1:]
    base = base.joinpath(*rest)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    """Each bptt module and the bptt modules it imports (lazy imports included)."""
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "backends").rglob("*.py")]
    graph = {}
    for path in files:
        reached = set()
        for module, names in _imports(path, top_level_only=False):
            if not module.startswith("bptt"):
                continue
            subs = [f"{module}.{n}" for n in names if _is_module(f"{module}.{n}")]
            reached |= set(subs) if subs else {module}
        graph[_module_name(path)] = reached - {_module_name(path)}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_belongs_to_a_layer() -> None:
    assert {_layer(m) for m in _graph()} == set(LAYERS)


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = [(m, t) for m, targets in _graph().items() for t in targets
             if _layer(t) != _layer(m) and _layer(t) not in LAYERS[_layer(m)]]  # fmt: skip
    assert not wrong, wrong


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    assert _cycle(LAYERS) is None  # the layers form a DAG
    assert _cycle(_graph()) is None, _cycle(_graph())


def test_the_checks_can_fail() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    graph = _graph()
    assert "bptt.math.layers" in graph["bptt.api.rnn"]  # `from ..math.layers import ...`
    assert "bptt.math.heads" in graph["bptt.api.rnn"]


def test_the_architecture_page_names_every_layer() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    for layer in set(LAYERS) - {"_startup", "_version", "__init__", "__main__", "backends"}:
        assert f"`bptt/{layer}/" in page, layer


def test_no_array_library_imported_at_module_level() -> None:
    for path in PACKAGE.rglob("*.py"):
        for module, _ in _imports(path, top_level_only=True):
            assert module.split(".")[0] not in LIBRARIES, (path, module)


JAX_USERS = {
    PACKAGE / "execution" / "compiled.py",
    *(PACKAGE / "execution" / "jax_exec").glob("*.py"),
}


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


def test_the_checkpoint_code_lives_with_the_training_job() -> None:
    """bptt/train/checkpoint.py imports from the job only what is below it (the options,
    the run state, the step, the run directory's file helpers)."""
    train = {m.split(".")[2] for m, _ in _imports(PACKAGE / "train" / "checkpoint.py",
             top_level_only=False) if m.startswith("bptt.train.")}  # fmt: skip
    assert train <= {"config", "state", "step", "rundir"}, train


def _body_lines(node: ast.AST) -> int:
    """Lines of a function's or class's body, its docstring left out."""
    body = node.body
    first = body[0]
    docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    start = body[1].lineno if docstring and len(body) > 1 else first.lineno
    return node.end_lineno - start + 1


def test_classes_and_functions_stay_small() -> None:
    """Every class under 200 lines and every function under 60 lines of body."""
    large = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "backends").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200:
                large.append((str(path.relative_to(ROOT)), node.name))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _body_lines(node) > 60:
                large.append((str(path.relative_to(ROOT)), node.name))
    assert not large, large
