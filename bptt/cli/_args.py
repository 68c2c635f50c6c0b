"""Argument types shared by the subcommands: range errors become argparse errors (exit 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "add_backend_arguments",
    "check_output_path",
    "factor",
    "fraction",
    "nonneg_float",
    "nonneg_int",
    "positive_float",
    "positive_int",
    "probability",
    "size",
]


def _number(cast: Callable[[str], Any], ok: Callable[[Any], bool], expected: str):
    """An argparse type: ``cast`` the text, then refuse it unless ``ok(value)``."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
        return value

    return parse


def _finite(test: Callable[[float], bool]) -> Callable[[float], bool]:
    return lambda v: math.isfinite(v) and test(v)


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")  # seeds: NumPy refuses < 0
positive_float = _number(float, _finite(lambda v: v > 0), "a positive number")
nonneg_float = _number(float, _finite(lambda v: v >= 0), "a number >= 0")
probability = _number(float, _finite(lambda v: 0 <= v < 1), "a probability in [0, 1)")
fraction = _number(float, _finite(lambda v: 0 < v < 1), "a number in (0, 1)")  # held out
factor = _number(float, _finite(lambda v: 0 < v <= 1), "a factor in (0, 1]")  # lr decay


def size(text: str) -> int:
    """A size in bytes: 4096, 500M, 2G (powers of 1024)."""
    from ..host.limits import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# What matplotlib's savefig writes, by suffix (it picks the format from the name).
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".eps", ".ps", ".tif",
                   ".tiff", ".webp", ".pgf", ".raw", ".rgba")  # fmt: skip


def check_output_path(path: str | None, flag: str, *, suffixes: tuple[str, ...] = ()) -> None:
    """ValueError unless ``path`` (None: nothing asked) can be written now: its folder
    exists and is writable, and it is not a directory, a FIFO or a device; with
    ``suffixes``, its name ends with one of them. Checked before any work, so that a
    long run never ends by failing to write its output."""
    import os
    import stat
    from pathlib import Path

    if path is None:
        return
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a directory"
        raise ValueError(f"{flag} {path}: the folder {str(folder)!r} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write to the folder {str(folder)!r}")
    if p.exists() or p.is_symlink():
        mode = os.stat(p).st_mode if p.exists() else 0
        if not stat.S_ISREG(mode):
            raise ValueError(f"{flag} {path}: exists and is not a regular file")
        if not os.access(p, os.W_OK):
            raise ValueError(f"{flag} {path}: exists and cannot be overwritten (permission)")
    if suffixes and p.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path}: expected a file name ending in one of {list(suffixes)}")


def device_arg(text: str) -> Any:
    """'0' -> 0 (a CUDA index), anything else as given ('cpu', 'cuda:1', 'device1')."""
    return int(text) if text.isdigit() else text


def add_backend_arguments(parser: argparse.ArgumentParser, *, default: str = "auto") -> None:
    parser.add_argument(
        "--backend",
        default=default,
        help=f"numpy, cupy, torch, jax, array_api_strict or auto (a usable GPU, else numpy); "
        f"default {default}",
    )
    parser.add_argument(
        "--device",
        type=device_arg,
        default=None,
        help="device on that backend: 0, cuda:1, cpu, device1 (array_api_strict) ...",
    )
    parser.set_defaults(_parser=parser)
