"""Argument types shared by the subcommands: range errors become argparse errors (exit 2)."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from typing import Any

from ..train.config import KINDS

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


def _as_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser whose ValueError may start with the field's name."""

    def as_type(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(re.sub(r"^\w+: ", "", str(e))) from None

    return as_type


def type_of(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """The argparse type of a field's own parser (``remat``), one per parser."""
    return _PARSER_TYPES.setdefault(parse, _as_type(parse))


_PARSER_TYPES: dict[Callable[[str], Any], Callable[[str], Any]] = {}
# The argparse types of the value kinds: the checks of bptt.train.config.KINDS, one table.
TYPES = {name: _as_type(kind.parse) for name, kind in KINDS.items()}
positive_int = TYPES["positive int"]
nonneg_int = TYPES["int >= 0"]
positive_float = TYPES["positive"]
nonneg_float = TYPES[">= 0"]
probability = TYPES["probability"]
fraction = TYPES["fraction"]
factor = TYPES["factor"]


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


def add_option_arguments(parser: argparse.ArgumentParser, config: Any,
                         titles: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """A flag for every field of the options dataclass ``config`` (as
    :class:`bptt.train.TrainConfig` declares them: kind, default, group, help), in
    argument groups titled by ``titles``; returns the groups, for the command's own
    flags. The flags default to None, so that an option not given stays unset (a
    resumed run keeps its stored value); the dataclass checks every value again."""
    groups = {name: parser.add_argument_group(title) for name, title in titles.items()}
    for f in dataclasses.fields(config):
        meta, flag = f.metadata, "--" + f.name.replace("_", "-")
        default = f"{f.default:g}" if isinstance(f.default, float) else f.default
        options: dict[str, Any] = {"dest": f.name, "help": f"{meta['help']} (default {default})"}
        kind = meta["kind"]
        if isinstance(kind, tuple):
            options["choices"] = kind
        else:
            options["type"] = TYPES[kind] if isinstance(kind, str) else type_of(kind)
        if "metavar" in meta:
            options["metavar"] = meta["metavar"]
        groups[meta["group"]].add_argument(flag, *meta.get("aliases", ()), **options)
    return groups


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


RENAMED = {"max_bytes": "max_text_size"}  # library arguments whose flag says more


def as_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message in the command line's words: each argument the library names
    (``checkpoint_dir=DIR``, ``overwrite=True``, ``lr=...``, ``hidden: ...`` at the
    start) becomes the flag that sets it (``--checkpoint-dir DIR``, ``--overwrite``,
    ``--lr``, ``--hidden: ...``).
    Only those forms: prose keeps its words, and names inside data (a checkpoint's
    keys) stay as they are."""
    flags = {a.dest: max(a.option_strings, key=lambda o: o.startswith("--"))
             for a in parser._actions if a.option_strings and a.dest != "help"}  # fmt: skip
    flags.update({name: flags[dest] for name, dest in RENAMED.items() if dest in flags})
    for dest, flag in sorted(flags.items(), key=lambda kv: -len(kv[0])):
        name = re.escape(dest)
        message = re.sub(rf"(?<![\w-]){name}=True\b", flag, message)
        message = re.sub(rf"(?<![\w-]){name}=(\.\.\.|(?=[),;]|$))", flag, message)
        message = re.sub(rf"(?<![\w-]){name}=", f"{flag} ", message)
        message = re.sub(rf"^{name}:", f"{flag}:", message)
    return message
