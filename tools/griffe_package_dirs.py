"""A Griffe extension for the API reference: mapped subpackages, and Sphinx roles.

``[tool.setuptools.package-dir]`` installs ``backends/`` as ``bptt.backends``; Griffe,
reading the source tree, would not find it under ``bptt/``. This loads each mapped
folder as the submodule its installed name says, so that the API reference documents
``bptt.backends`` as users import it. The docstrings' Sphinx roles (``:func:`name```)
are shown as code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import griffe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
ROLE = re.compile(r":(?:func|meth|class|mod|attr|data|obj|exc):`~?([^`]+)`")


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
        _plain_roles(pkg, set())


def _plain_roles(obj: griffe.Object, seen: set[str]) -> None:
    """``:func:`x``` becomes ```x``` in every docstring under ``obj``."""
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _plain_roles(member, seen)
