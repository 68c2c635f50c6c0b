"""Bounds on what bptt reads and allocates, checked before the work.

- **Files**: :func:`open_regular` opens only a regular file (never a FIFO, a
  device or a directory: ``/dev/zero`` would read forever, a FIFO would hang),
  without blocking, and refuses one larger than a stated limit before reading a
  byte of it.
- **Memory**: :func:`require_memory` refuses an allocation plan that cannot fit
  in the memory this process may use (the least of the machine's available
  memory, its cgroup limit and its address-space limit; a GPU's free memory
  for a GPU backend), naming the size asked for and what would fit. The plans
  are lower bounds (the arrays that must exist at once), so a refusal is
  certain, never a guess.

Imports nothing of bptt, so that every layer may use it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DEFAULT_MAX_TEXT_BYTES",
    "NotRegularFileError",
    "TooLargeError",
    "available_memory",
    "format_size",
    "open_regular",
    "parse_size",
    "require_memory",
]

DEFAULT_MAX_TEXT_BYTES = 1 << 30  # 1 GiB: a text larger than this needs --max-text-size

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class TooLargeError(ValueError):
    """A file or an allocation larger than the stated limit or the memory available."""


class NotRegularFileError(ValueError):
    """A path that is a FIFO, a device, a socket or a directory, not a regular file."""


def format_size(nbytes: float) -> str:
    """``1.5 GiB``, ``12.0 TiB``, ``812 bytes``."""
    if nbytes < 1024:
        return f"{int(nbytes)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        nbytes /= 1024
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.1f} {unit}"
    raise AssertionError("not reached")


def parse_size(text: str) -> int:
    """``"2G"``, ``"500M"``, ``"1.5GiB"``, ``"4096"`` -> bytes (powers of 1024); ValueError else."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if found is None:
        raise ValueError(f"expected a size such as 4096, 500M or 2G; got {text!r}")
    value = float(found[1]) * _UNITS[found[2].upper()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"expected a size of at least 1 byte; got {text!r}")
    return int(value)


# ---- files ---------------------------------------------------------------------------


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def open_regular(
    path: str | os.PathLike, *, what: str, limit: int | None = None, flag: str = ""
) -> Iterator[tuple[IO[bytes], int]]:
    """``(file, size)`` of the regular file ``path``, opened for binary reading.

    Raises ``OSError`` (``FileNotFoundError``, ...) where the system refuses,
    :class:`NotRegularFileError` for anything but a regular file (checked before
    opening, so a FIFO cannot block the open, and again on the open file, so it
    cannot be swapped in between) and :class:`TooLargeError` for one over
    ``limit`` bytes; ``what`` names
    the argument in the message and ``flag`` the option that raises the limit.
    """
    p = Path(path)
    mode = os.stat(p).st_mode  # follows links: a link to a regular file is fine
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(
            f"{what}: {str(p)!r} is {_kind(mode)}; only regular files are read"
        )
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    flags |= getattr(os, "O_BINARY", 0)
    fd = os.open(p, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(
                f"{what}: {str(p)!r} is {_kind(info.st_mode)}; only regular files are read"
            )
        if limit is not None and info.st_size > limit:
            how = f"; raise the limit with {flag}" if flag else ""
            raise TooLargeError(
                f"{what}: {str(p)!r} is {format_size(info.st_size)}, more than the limit of "
                f"{format_size(limit)}{how}"
            )
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, info.st_size


# ---- memory --------------------------------------------------------------------------


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def _host_available() -> int | None:
    """The least of MemAvailable, the cgroup's room and RLIMIT_AS's room (Linux), else
    the physical memory; None where nothing is known."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 1 << 60:
            found.append(max(cap - used, 0))
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            found.append(max(soft - _virtual_size(), 0))
    except (ImportError, OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, OSError, ValueError):
            return None
    return min(found)


def _virtual_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _device_available(backend: Any) -> int | None:
    """Free memory of a GPU backend's device, asked of the library already loaded
    (nothing is imported here); None for a CPU device or when the library cannot say."""
    name, device = getattr(backend, "name", None), getattr(backend, "device", None)
    try:
        if name == "cupy" and "cupy" in sys.modules:
            with sys.modules["cupy"].cuda.Device(getattr(device, "id", device)):
                return int(sys.modules["cupy"].cuda.runtime.memGetInfo()[0])
        if name == "torch" and getattr(device, "type", "cpu") == "cuda":
            return int(sys.modules["torch"].cuda.mem_get_info(device)[0])
        if name == "jax" and getattr(device, "platform", "cpu") != "cpu":
            stats = device.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    except Exception:  # a library that cannot say: judge by the host
        return None
    return None


def available_memory(backend: Any = None) -> int | None:
    """Bytes this process may still allocate on ``backend``'s device (the host's for
    CPU backends and None); None where nothing is known."""
    device = _device_available(backend) if backend is not None else None
    return device if device is not None else _host_available()


def require_memory(nbytes: float, what: str, *, backend: Any = None, fix: str = "") -> None:
    """:class:`TooLargeError` when ``nbytes`` (a lower bound of what ``what`` needs)
    cannot fit in :func:`available_memory`; ``fix`` says what to change."""
    available = available_memory(backend)
    if available is None or nbytes <= available:
        return
    where = (
        "on this machine"
        if backend is None or _device_available(backend) is None
        else (f"on {backend.name} device {backend.device}")
    )
    raise TooLargeError(
        f"{what} would need at least {format_size(nbytes)} of memory, more than the "
        f"{format_size(available)} available {where}" + (f"; {fix}" if fix else "")
    )
