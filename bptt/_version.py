"""The installed distribution's version, read once."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bptt")
    """The installed version of bptt."""
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
