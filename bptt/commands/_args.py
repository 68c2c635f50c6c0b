"""Argument types shared by the subcommands: range errors become argparse errors (exit 2)."""

from __future__ import annotations

import argparse
import math
from typing import Any

__all__ = [
    "add_backend_arguments",
    "factor",
    "fraction",
    "nonneg_float",
    "nonneg_int",
    "positive_float",
    "positive_int",
    "probability",
]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0 (lengths, seeds: NumPy refuses negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
    return value


def nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text!r}")
    return value


def probability(text: str) -> float:
    value = nonneg_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1); got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number strictly between 0 and 1 (the held-out fraction)."""
    value = nonneg_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1); got {text!r}")
    return value


def factor(text: str) -> float:
    """A multiplier in (0, 1] (learning-rate decay)."""
    value = nonneg_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a factor in (0, 1]; got {text!r}")
    return value


def device_arg(text: str) -> Any:
    """'0' -> 0 (a CUDA index), anything else as given ('cpu', 'cuda:1', 'device1')."""
    return int(text) if text.isdigit() else text


def add_backend_arguments(parser: argparse.ArgumentParser, *, default: str = "auto") -> None:
    parser.add_argument(
        "--backend",
        default=default,
        help=f"numpy, cupy, torch, array_api_strict or auto (a usable GPU, else numpy); "
        f"default {default}",
    )
    parser.add_argument(
        "--device",
        type=device_arg,
        default=None,
        help="device on that backend: 0, cuda:1, cpu, device1 (array_api_strict) ...",
    )
    parser.set_defaults(_parser=parser)
