"""Argument types shared by the subcommands: range errors become argparse errors (exit 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
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
