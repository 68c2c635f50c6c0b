"""The release: one version everywhere, a changelog entry for it, and an sdist and a wheel
that pass ``twine check`` and install into a fresh environment where ``bptt info`` and the
README's first example run.

The wheel's contents (``py.typed``, ``bptt.backends``, the metadata) are checked fast in
tests/test_packaging.py; the whole release here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import bptt

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
VERSION = re.search(r'^version = "([^"]+)"', PYPROJECT, flags=re.M)[1]
CHANGELOG = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
SECTIONS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_one_version_everywhere() -> None:
    assert bptt.__version__ == VERSION, "reinstall (pip install -e .) after a version change"
    major, minor, _ = (int(p) for p in VERSION.split("."))
    assert (major, minor) >= (0, 2)  # the API changed since 0.1.0


def test_the_changelog_keeps_a_changelog_and_names_this_release() -> None:
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", CHANGELOG, re.M)
    assert releases and releases[0][0] == VERSION, "the newest entry is this version"
    assert [r[0] for r in releases] == sorted((r[0] for r in releases), reverse=True)
    assert set(re.findall(r"^### (\w+)$", CHANGELOG, re.M)) <= SECTIONS
    newest = CHANGELOG.split("\n## [")[1]
    for change in ("bptt.RNN", "gru", "lstm", "remat", "lax.scan", "identity", "format 3"):
        assert change in newest, f"{change!r} is not in the changelog's {VERSION} entry"


def _have(*modules: str) -> None:
    for name in modules:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[test]' installs it)")


def _deps_pth(site: Path) -> None:
    """The fresh environment sees numpy and array-api-compat of this one, nothing else."""
    import array_api_compat
    import numpy

    folder = site / "_deps"
    folder.mkdir()
    for module in (numpy, array_api_compat):
        package = Path(module.__file__).parent
        (folder / package.name).symlink_to(package)
        libs = package.with_name(package.name + ".libs")
        if libs.exists():
            (folder / libs.name).symlink_to(libs)
    (site / "_deps.pth").write_text(f"{folder}\n")


@pytest.mark.slow
def test_the_release_builds_checks_and_installs_anywhere(tmp_path: Path) -> None:
    _have("build", "twine")
    dist = tmp_path / "dist"
    run = {"capture_output": True, "text": True, "timeout": 600}
    out = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], **run)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (sdist,) = dist.glob(f"bptt-{VERSION}.tar.gz")
    (wheel,) = dist.glob(f"bptt-{VERSION}-py3-none-any.whl")
    out = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], **run)
    assert out.returncode == 0, out.stdout + out.stderr
    names = tarfile.open(sdist).getnames()
    for path in ("CHANGELOG.md", "README.md", "bptt/py.typed", "backends/__init__.py"):
        assert f"bptt-{VERSION}/{path}" in names, path
    assert "bptt/py.typed" in zipfile.ZipFile(wheel).namelist()

    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.check_output([python, "-c", purelib], text=True).strip())
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
    out = subprocess.run([*pip, str(wheel)], **run)
    assert out.returncode == 0, out.stderr
    _deps_pth(site)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BPTT_BACKEND")}
    out = subprocess.run([env_dir / "bin" / "bptt", "info"], cwd=tmp_path, env=clean, **run)
    assert out.returncode == 0, out.stderr
    assert f"bptt {VERSION}" in out.stdout
    assert _where(python) == str(site / "bptt" / "__init__.py")  # the wheel's, not this tree's

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (first,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    out = subprocess.run([python, "-c", first], cwd=tmp_path, env=clean, **run)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) < 0.5


def _where(python: Path) -> str:
    code = "import bptt; print(bptt.__file__)"
    return subprocess.check_output([python, "-c", code], text=True, cwd=python.parent).strip()
