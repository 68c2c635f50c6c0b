"""Ctrl-C while the ``bptt`` command imports NumPy and bptt: exit 130 with one line.

Imported first by ``bptt/__init__.py``. Only when this process is the ``bptt`` command
(the console script, or ``python -m bptt``), SIGINT is answered, until
:func:`bptt.cli.main` starts, by one ``bptt: interrupted`` line and exit status 130,
instead of a ``KeyboardInterrupt`` traceback from inside an import. A program that
imports bptt as a library keeps Python's own handler.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading


def _is_command() -> bool:
    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    orig = list(getattr(sys, "orig_argv", []))
    return argv0 == "bptt" or any(pair == ("-m", "bptt") for pair in itertools.pairwise(orig))


def interrupted(signum: int, frame: object) -> None:
    """SIGINT during start-up: one line, exit 130, nothing else run."""
    try:
        os.write(2, b"bptt: interrupted\n")
    finally:
        os._exit(130)


def install() -> bool:
    """Answer SIGINT with :func:`interrupted` if this process is the command; whether it
    does."""
    if (
        _is_command()
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, interrupted)
        return True
    return False


def uninstall() -> None:
    """Python's own handler again (``bptt.cli.main`` handles KeyboardInterrupt itself)."""
    if signal.getsignal(signal.SIGINT) is interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


INSTALLED = install()
