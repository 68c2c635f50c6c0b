"""Reading a checkpoint's ``.npz`` archive member by member, each within a bound.

An ``.npz`` is a zip archive of ``.npy`` files. :class:`Archive` opens one (a
regular file only, never a FIFO or a device), lists its members without
reading them, and reads a member only when asked, with the shape and dtype the
caller expects: the member's ``.npy`` header (a few hundred bytes) is read and
checked first, and its declared data size against the archive's record of the
member, so a small file that declares a 2 GiB member or a 10^6 x 10^6 array is
refused before any of it is read. No member needs or gets pickle.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import limits

__all__ = ["Archive", "ArchiveError"]

MAX_HEADER = 4096  # bytes of an .npy header: a dict of descr, fortran_order and shape


class ArchiveError(ValueError):
    """What is wrong, in words; the caller adds the file's name. ``kind`` is "corrupt",
    "truncated", "not-npz", "field" or "missing"; ``field`` the member, if one."""

    def __init__(self, message: str, kind: str = "field", field: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.field = kind, field


class _Counting:
    """A read-only stream that counts what was read from it (for the header length)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.count = stream, 0

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > MAX_HEADER:
            raise ArchiveError(f"an .npy header longer than {MAX_HEADER} bytes", "corrupt")
        data = self.stream.read(n)
        self.count += len(data)
        return data


def _archive_error(e: Exception) -> ArchiveError:
    text = str(e)
    if isinstance(e, zlib.error) or "CRC" in text or "Bad magic" in text:
        return ArchiveError(f"is corrupt ({text}); use another checkpoint", "corrupt")
    return ArchiveError(
        f"is truncated (an incomplete .npz archive: {text}); it was probably cut off while "
        "being copied; use another checkpoint",
        "truncated",
    )


class Archive:
    """An open ``.npz`` archive: ``names`` (member names without ``.npy``), and
    :meth:`read` of one member against an expected shape and dtypes. Use it as a
    context manager."""

    def __init__(self, path: str | Path) -> None:
        self._opened = limits.open_regular(path, what="checkpoint")
        try:
            self._file, size = self._opened.__enter__()
            if self._file.read(4) != b"PK\x03\x04":
                raise ArchiveError("is not a bptt checkpoint (not an .npz archive)", "not-npz")
            self._file.seek(0)
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            self.close()
            raise _archive_error(e) from None
        except BaseException:
            self.close()
            raise
        infos = self._zip.infolist()
        self.names: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename.removesuffix(".npy")
            if name in self.names or not info.filename.endswith(".npy"):
                self.close()
                what = "twice" if name in self.names else "(not an .npy array)"
                raise ArchiveError(f"member {info.filename!r} {what}", "corrupt")
            if info.file_size > size and info.compress_type == zipfile.ZIP_STORED:
                self.close()
                raise ArchiveError(f"member {info.filename!r} is larger than the file", "truncated")
            self.names[name] = info

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        zf = getattr(self, "_zip", None)
        if zf is not None:
            zf.close()
        self._opened.__exit__(None, None, None)

    def read(
        self,
        name: str,
        shape: tuple[int, ...] | None,
        ok_dtype: Callable[[np.dtype], bool],
        expected: str,
        *,
        max_bytes: int | None = None,
    ) -> np.ndarray:
        """Member ``name`` as an array, after its header shows ``shape`` (None: any
        shape) and a dtype with ``ok_dtype`` (``expected`` says which, in words), and
        a size of at most ``max_bytes``; ArchiveError naming what differs otherwise."""
        try:
            return self._read(name, shape, ok_dtype, expected, max_bytes)
        except ArchiveError as e:
            e.field = name
            raise

    def _read(
        self,
        name: str,
        shape: tuple[int, ...] | None,
        ok_dtype: Callable[[np.dtype], bool],
        expected: str,
        max_bytes: int | None,
    ) -> np.ndarray:
        info = self.names.get(name)
        if info is None:
            raise ArchiveError("missing from the file", "missing")
        try:
            with self._zip.open(info) as stream:
                counting = _Counting(stream)
                version = np.lib.format.read_magic(counting)
                header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if header is None:
                    raise ArchiveError(f"an .npy header of unknown version {version}", "corrupt")
                stored_shape, fortran, dtype = header(counting, max_header_size=MAX_HEADER)
                _check_header(stored_shape, dtype, shape, ok_dtype, expected)
                nbytes = math.prod(stored_shape) * dtype.itemsize
                if max_bytes is not None and nbytes > max_bytes:
                    raise ArchiveError(
                        f"declares {limits.format_size(nbytes)}, more than the "
                        f"{limits.format_size(max_bytes)} this field may hold"
                    )
                if info.file_size != counting.count + nbytes:
                    raise ArchiveError(
                        f"declares {nbytes} bytes of data but the archive holds "
                        f"{info.file_size - counting.count}",
                        "corrupt",
                    )
                buffer = bytearray(nbytes)
                view, got = memoryview(buffer), 0
                while got < nbytes:
                    n = stream.readinto(view[got:])
                    if not n:
                        raise ArchiveError("ends before its data", "truncated")
                    got += n
                if stream.read(1):  # also makes zipfile check the CRC
                    raise ArchiveError("holds more than its header declares", "corrupt")
        except (zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise _archive_error(e) from None
        except (ValueError, OSError) as e:
            if isinstance(e, ArchiveError):
                raise
            raise ArchiveError(f"is corrupt ({e})", "corrupt") from None
        array = np.frombuffer(buffer, dtype=dtype)
        if fortran:
            return array.reshape(stored_shape[::-1]).T
        return array.reshape(stored_shape)


def _check_header(
    stored: tuple[int, ...],
    dtype: np.dtype,
    shape: tuple[int, ...] | None,
    ok_dtype: Callable[[np.dtype], bool],
    expected: str,
) -> None:
    if dtype.hasobject or not ok_dtype(dtype):
        raise ArchiveError(f"expected {expected}; the file declares dtype {dtype}")
    if shape is not None and tuple(stored) != tuple(shape):
        raise ArchiveError(
            f"expected shape {tuple(shape)} from the configuration; the file declares "
            f"{tuple(stored)}"
        )
