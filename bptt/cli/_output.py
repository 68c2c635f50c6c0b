"""Standard output and error that may fail: a reader that went away (``bptt train |
head -1``), a full device (``> /dev/full``), a closed descriptor.

:func:`guarded` wraps ``sys.stdout`` and ``sys.stderr`` for the length of a command:
a write that fails is recorded, never raised, and that stream's descriptor is pointed
at ``/dev/null`` (so that Python's own flush at exit cannot fail again). A command
that can save its work asks :func:`failure` between steps (``bptt train`` stops there
as Ctrl-C stops it: validates, saves, and says so); the command line then ends with
one line on standard error and exit status 1.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["GuardedStream", "failure", "guarded"]


class GuardedStream:
    """A text stream whose write and flush never raise OSError: the first failure is
    kept in ``error`` and later writes go nowhere."""

    def __init__(self, stream: Any, name: str) -> None:
        self.stream, self.name = stream, name
        self.error: OSError | None = None

    def write(self, text: str) -> int:
        if self.error is None:
            try:
                return self.stream.write(text)
            except OSError as e:
                self._fail(e)
        return len(text)

    def flush(self) -> None:
        if self.error is None:
            try:
                self.stream.flush()
            except OSError as e:
                self._fail(e)

    def _fail(self, error: OSError) -> None:
        self.error = error
        with contextlib.suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())  # the buffered rest goes nowhere, quietly
            os.close(null)

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ...
        return getattr(self.stream, name)


_ACTIVE: list[tuple[GuardedStream, GuardedStream]] = []


def failure() -> str | None:
    """``"standard output: [Errno 32] Broken pipe"`` once a guarded write failed (the
    first), else None."""
    for out, err in _ACTIVE[-1:]:
        for stream in (out, err):
            if stream.error is not None:
                return f"{stream.name}: {stream.error.strerror or stream.error}"
    return None


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` guarded while the block runs."""
    out = GuardedStream(sys.stdout, "standard output")
    err = GuardedStream(sys.stderr, "standard error")
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    _ACTIVE.append((out, err))
    try:
        yield
    finally:
        _ACTIVE.pop()
        with contextlib.suppress(OSError, ValueError):
            out.flush()
        sys.stdout, sys.stderr = saved
