"""Packaging: one top-level name (``bptt``), and ``bptt.backends`` in every kind of install.

``backends/`` sits at the top of the repository and is mapped to ``bptt.backends``
by pyproject.toml. Each install is checked in a subprocess that sees only the
install itself plus the two runtime dependencies, so the developer's own
(editable) install cannot answer in its place.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def _isolated_import(site_dir: Path, deps: Path) -> dict[str, str]:
    """Import bptt with only ``deps`` (numpy, array_api_compat) and ``site_dir`` visible."""
    code = (
        "import sys, site; sys.path.insert(0, sys.argv[1]); site.addsitedir(sys.argv[2]);"
        "import bptt, bptt.backends;"
        "print(bptt.__file__); print(bptt.backends.__file__);"
        "print(bptt.backends.get_backend('numpy').name)"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", code, str(deps), str(site_dir)],
        capture_output=True,
        text=True,
        cwd=site_dir,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert out.returncode == 0, out.stderr
    bptt_file, backends_file, name = out.stdout.split()
    return {"bptt": bptt_file, "backends": backends_file, "name": name}


@pytest.fixture(scope="module")
def deps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding links to the runtime dependencies only."""
    import array_api_compat
    import numpy

    folder = tmp_path_factory.mktemp("deps")
    for module in (numpy, array_api_compat):
        package = Path(module.__file__).parent
        (folder / package.name).symlink_to(package)
        libs = package.with_name(package.name + ".libs")  # vendored BLAS of manylinux wheels
        if libs.exists():
            (folder / libs.name).symlink_to(libs)
    return folder


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([*PIP, "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)], check=True)
    (path,) = out.glob("bptt-*.whl")
    return path


def test_wheel_has_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"bptt"}
    assert "bptt/backends/__init__.py" in names
    assert "bptt/cli/__init__.py" in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = sorted(
        line.split()[1]
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )
    assert requires == ["array-api-compat>=1.12", "numpy>=1.26"]


def test_normal_install_imports_bptt_backends(wheel: Path, deps: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True
    )
    found = _isolated_import(target, deps)
    assert found["bptt"] == str(target / "bptt" / "__init__.py")
    assert found["backends"] == str(target / "bptt" / "backends" / "__init__.py")
    assert found["name"] == "numpy"


def test_editable_install_imports_bptt_backends(deps: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "-q", "--no-deps", "--target", str(target), "-e", str(ROOT)], check=True
    )
    found = _isolated_import(target, deps)
    assert found["bptt"] == str(ROOT / "bptt" / "__init__.py")
    assert found["backends"] == str(ROOT / "backends" / "__init__.py")
