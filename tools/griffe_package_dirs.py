"""A Griffe extension: subpackages that pyproject.toml maps from another folder.

``[tool.setuptools.package-dir]`` installs ``backends/`` as ``bptt.backends``; Griffe,
reading the source tree, would not find it under ``bptt/``. This loads each mapped
folder as the submodule its installed name says, so that the API reference documents
``bptt.backends`` as users import it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[1]


def mapped_packages() -> dict[str, Path]:
    """``{"bptt.backends": ROOT / "backends", ...}``: the mapped subpackages."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir = config.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {name: ROOT / path for name, path in package_dir.items() if "." in name}


class PackageDirs(griffe.Extension):
    """Graft each mapped folder onto its parent package, under its installed name."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for name, folder in mapped_packages().items():
            parent_name, _, child = name.rpartition(".")
            if parent_name != pkg.path:
                continue
            module = loader._load_module(child, folder / "__init__.py", parent=pkg)
            loader._load_submodules(module)
            pkg.set_member(child, module)
            loader.expand_exports(module)
