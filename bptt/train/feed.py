"""The training text on the device, served T characters of every stream per step."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..text.data import Streams

__all__ = ["EpochFeed"]


class EpochFeed:
    """The B streams of one epoch as one time-major device array; chunk k's inputs
    and targets are views of one (T + 1, B) window of it, cast to the device's
    index dtype. The ids are moved to the device once, in their compact dtype
    (uint8 for up to 256 symbols: the text costs a byte per character there).
    ``columns``: only these of the B streams (one rank's share, data-parallel)."""

    def __init__(self, train_ids: np.ndarray, streams: Streams, backend: Any,
                 columns: slice | None = None) -> None:  # fmt: skip
        self.streams, self.columns = streams, columns or slice(None)
        self._xp = backend.xp
        self._ids = backend.asarray(train_ids)  # (N,) compact ids, moved once
        self._index = backend.integer  # what the step's ids are (int64; int32 on JAX w/o x64)
        self._epoch: Any = None  # (chunks*T + 1, B)

    def begin_epoch(self, offset: int) -> None:
        """Lay out the epoch whose streams start at ``offset``."""
        xp, s = self._xp, self.streams
        start, stop = s.epoch_slice(offset)
        used = s.chunks * s.seq_len + 1
        E = xp.reshape(self._ids[start:stop], (s.batch, s.stream_length))  # (B, L)
        self._epoch = xp.permute_dims(E[self.columns, :used], (1, 0))  # (chunks*T + 1, B)

    def chunk(self, k: int) -> tuple[Any, Any]:
        """Inputs and next-character targets of chunk k, each (T, B)."""
        T = self.streams.seq_len
        window = self._xp.astype(self._epoch[k * T : (k + 1) * T + 1, ...], self._index)
        return window[:-1, ...], window[1:, ...]  # (T, B) inputs, (T, B) next characters
