"""bptt: recurrent networks trained with hand-derived backpropagation through time.

Written once against the Python array API standard: the same forward and
backward code runs on NumPy, CuPy, torch and array_api_strict. The equations
follow the derivation in ``docs/derivation.md``.

>>> import bptt
>>> model = bptt.RNN(65, 100, 65, cell="tanh")
>>> params = model.init(dtype="float64", seed=0)
"""

from __future__ import annotations

# isort: off
# _startup first (before any other import): Ctrl-C while the bptt command starts, exit 130
from ._startup import INSTALLED as _STARTUP_GUARD  # noqa: F401
from importlib.metadata import PackageNotFoundError, version

# isort: on

from . import backends, optim
from .api import interop
from .api.functional import forward, gradcheck, init_params, loss_and_grad, vjp
from .api.rnn import RNN

try:
    __version__ = version("bptt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "RNN",
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
