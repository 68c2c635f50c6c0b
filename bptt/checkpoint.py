"""The checkpoint API's earlier home: :mod:`bptt.train.checkpoint` holds it now."""

from __future__ import annotations

from .train.checkpoint import *  # noqa: F403
from .train.checkpoint import __all__  # noqa: F401
