"""Copies to the host of many arrays in few transfers: one per dtype."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _group_by_dtype(arrays: Sequence[Any]) -> list[list[int]]:
    """Indices of ``arrays`` grouped by dtype, in order of first appearance.

    Compared with ``==`` rather than hashed: every library's dtypes compare, not
    every library promises hashable dtypes.
    """
    dtypes: list[Any] = []
    groups: list[list[int]] = []
    for index, x in enumerate(arrays):
        for dtype, members in zip(dtypes, groups, strict=True):
            if x.dtype == dtype:
                members.append(index)
                break
        else:
            dtypes.append(x.dtype)
            groups.append([index])
    return groups


def host_copies(
    xp: Any, to_numpy: Callable[[Any], np.ndarray], arrays: Sequence[Any]
) -> list[np.ndarray]:
    """``[to_numpy(x) for x in arrays]`` with one ``to_numpy`` per dtype.

    Arrays of one dtype are flattened and concatenated on their device, copied
    once, then split and reshaped on the host (views into that one copy). A dtype
    held by a single array is copied directly.
    """
    host: list[np.ndarray | None] = [None] * len(arrays)
    for members in _group_by_dtype(arrays):
        if len(members) == 1:
            host[members[0]] = to_numpy(arrays[members[0]])
            continue
        flat = to_numpy(xp.concat([xp.reshape(arrays[i], (-1,)) for i in members]))
        offset = 0
        for i in members:
            shape = tuple(arrays[i].shape)
            size = math.prod(shape)
            host[i] = flat[offset : offset + size].reshape(shape)
            offset += size
    return host  # type: ignore[return-value]  # every slot is filled above
