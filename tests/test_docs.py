"""The documentation: every example runs, the site builds with warnings as errors, and
the API reference names every public name.

A fenced block runs unless the line before it says why not, as
``<!-- docs-test: skip (REASON) -->`` (a GPU, MPI, a run of minutes, an install).
Python blocks run in a fresh namespace in an empty directory; shell blocks run in
``bash -e`` there, with this interpreter's ``bptt`` first on the PATH.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
SKIP = re.compile(r"<!-- docs-test: skip \((?P<reason>[^)]+)\) -->\n$")
MARKER = "docs-test:"
PUBLIC = ["bptt", "bptt.optim", "bptt.train", "bptt.backends", "bptt.interop"]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip: str | None  # the reason, when the page says it does not run

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()]
        prev = before[before.rstrip("\n").rfind("\n") + 1 :] if before else ""
        skip = SKIP.search(prev)
        line = before.count("\n") + 1
        found.append(Block(path, line, m.group(1), m.group(2), skip and skip["reason"]))
    return found


ALL = [b for page in PAGES for b in blocks(page)]
PYTHON = [b for b in ALL if b.lang == "python"]
SHELL = [b for b in ALL if b.lang in ("bash", "sh", "console")]


def test_blocks_are_found_and_markers_are_well_formed() -> None:
    assert len(PYTHON) >= 8 and len(SHELL) >= 10
    for page in PAGES:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if MARKER in line:
                assert SKIP.search(line + "\n"), f"{page.name}:{n}: a marker needs a reason"
    langs = {b.lang for b in ALL}
    assert langs <= {"python", "bash", "text"}, langs  # a block of another kind runs nowhere


def test_some_examples_run_and_their_skips_say_why() -> None:
    for kind in (PYTHON, SHELL):
        assert sum(b.skip is None for b in kind) >= 4
    assert all(b.skip.strip() for b in ALL if b.skip is not None)


def _last_number(out: str) -> float:
    return float(out.split()[-1])


def _learns_the_mapping(out: str, namespace: dict) -> None:
    assert _last_number(out) < 0.5  # from log(65) = 4.17: "next id" is learned


def _vjp_learns_and_converts(out: str, namespace: dict) -> None:
    assert _last_number(out) < 0.01  # from 0.918 at the start
    assert list(namespace["params"])[:4] == ["U", "W", "U_l0_reverse", "W_l0_reverse"]


# What some examples must print, found by a line of their code.
CHECKS = {
    "model.vjp(": _vjp_learns_and_converts,
    "(ids + 1) % 65": _learns_the_mapping,
}


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs(block: Block, tmp_path: Path, monkeypatch, capsys) -> None:
    if block.skip:
        pytest.skip(block.skip)
    if re.search(r"^import jax", block.code, re.M):
        pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    if "bptt.interop" in block.code:
        pytest.importorskip("torch", reason="the example converts the model to torch")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(block.code, block.id, "exec"), namespace)
    out = capsys.readouterr().out
    for needle, check in CHECKS.items():
        if needle in block.code:
            check(out, namespace)


def test_the_checked_examples_are_there() -> None:
    guide = [b for b in PYTHON if b.path.name == "guide.md"]
    assert len([b for b in guide if "model.vjp(" in b.code]) == 1
    jax_blocks = [b for b in guide if "import jax" in b.code]
    assert len(jax_blocks) == 2  # a hand-written step under jax.jit, and make_train_step's
    assert any("jax.jit(make_train_step(" in b.code for b in jax_blocks)
    assert all("(ids + 1) % 65" in b.code for b in jax_blocks)


def run_shell(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("BPTT_BACKEND", None)
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_block_runs(block: Block, tmp_path: Path) -> None:
    if block.skip:
        pytest.skip(block.skip)
    unsafe = re.search(r"\bpip install|\bmpiexec|\bmpirun|--resume|\bsudo\b", block.code)
    assert not unsafe, f"{block.id}: {unsafe[0]!r} is never run here; mark the block skipped"
    out = run_shell(block.code, tmp_path)
    assert out.returncode == 0, f"{block.id}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"


def test_cupy_loop_mirrors_the_numpy_one() -> None:
    guide = [b for b in PYTHON if b.path.name == "guide.md"]
    (cupy_block,) = [b for b in guide if "import cupy" in b.code]
    assert cupy_block.skip and 'backend="cupy"' in cupy_block.code
    call = "model.loss_and_grad(params, ids, targets, check_values=step == 0)"
    numpy_blocks = [b for b in guide if call in b.code and b is not cupy_block]
    assert numpy_blocks and cupy_block.code.count(call) == 1


# --- the site -------------------------------------------------------------------------


def _needs_mkdocs() -> None:
    for name in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(name.split(".")[0]) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[test]' installs it)")


def _directives() -> list[str]:
    return [
        m.group(1)
        for page in sorted((DOCS / "api").glob("*.md"))
        for m in re.finditer(r"^::: ([\w.]+)\s*$", page.read_text(encoding="utf-8"), re.M)
    ]


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    _needs_mkdocs()
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    api = (tmp_path / "site" / "api" / "optim" / "index.html").read_text(encoding="utf-8")
    assert "global_norm" in api and "Optax-style" in api  # the docstrings were rendered


def test_the_api_reference_documents_every_public_name() -> None:
    documented = set(_directives())
    missing = []
    for namespace in PUBLIC:
        module = importlib.import_module(namespace)
        for name in module.__all__:
            target = f"{namespace}.{name}"
            if f"{module.__name__}.{name}" in PUBLIC:
                target = f"{module.__name__}.{name}"  # a subpackage: its page documents it
            if target not in documented:
                missing.append(target)
    assert not missing, f"public names missing from docs/api/*.md: {missing}"


def test_the_api_reference_names_public_paths_only() -> None:
    for path in _directives():
        namespace, _, name = path.rpartition(".")
        assert path in PUBLIC or namespace in PUBLIC, f"{path}: not a public namespace"
        if path not in PUBLIC:
            assert name in importlib.import_module(namespace).__all__, path
    assert "bptt.RNN" in _directives()


def test_every_page_is_in_the_nav_and_linked_from_the_readme() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in sorted(DOCS.glob("*.md")):
        assert page.name in nav, f"{page.name} is not in mkdocs.yml's nav"
        if page.name not in ("index.md", "changelog.md"):
            assert f"(docs/{page.name}" in readme, f"the README does not link {page.name}"


def test_every_public_name_has_a_docstring() -> None:
    """What the reference renders: Griffe's view, as mkdocstrings loads it (attribute
    docstrings included, which the running objects do not carry)."""
    _needs_mkdocs()
    import griffe

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from griffe_package_dirs import PackageDirs
    finally:
        sys.path.remove(str(ROOT / "tools"))
    loader = griffe.GriffeLoader(
        extensions=griffe.load_extensions(PackageDirs()), search_paths=[str(ROOT)]
    )
    package = loader.load("bptt")
    loader.resolve_aliases(external=False, implicit=False)
    bare = []
    for namespace in PUBLIC:
        module = importlib.import_module(namespace)
        for name in module.__all__:
            obj = package[f"{namespace}.{name}".removeprefix("bptt.")]
            target = obj.final_target if obj.is_alias else obj
            if target.docstring is None or not target.docstring.value.strip():
                bare.append(f"{namespace}.{name}")
    assert not bare, f"public names without a docstring: {bare}"
