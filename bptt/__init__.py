"""bptt: recurrent networks trained with hand-derived backpropagation through time.

Written once against the Python array API standard: the same forward and
backward code runs on NumPy, CuPy, torch and array_api_strict. The equations
follow the derivation in ``docs/derivation.md``.

>>> import bptt
>>> params = bptt.init_params(65, 100, 65, dtype="float64", seed=0)
"""

from __future__ import annotations

# isort: off
# _startup first (before any other import): Ctrl-C while the bptt command starts, exit 130
from ._startup import INSTALLED as _STARTUP_GUARD  # noqa: F401
from importlib.metadata import PackageNotFoundError, version

# isort: on

from . import backends, interop, optim
from .api import forward, gradcheck, loss_and_grad
from .params import init_params
from .pullback import vjp

try:
    __version__ = version("bptt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "backends",
    "forward",
    "gradcheck",
    "init_params",
    "interop",
    "loss_and_grad",
    "optim",
    "vjp",
]
