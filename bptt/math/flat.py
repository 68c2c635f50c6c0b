"""All the parameters as one flat vector, each named parameter a view into it.

An optimizer update acts leaf by leaf, so five parameter arrays cost five times the
array operations of one: the training step keeps the parameters (and so the
optimizer's moments) as one vector, and hands :func:`bptt.loss_and_grad` views of
it. The gradients, five new arrays, are joined by one ``concat``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = ["Layout"]


class Layout(NamedTuple):
    """Where each named parameter lies in the flat vector: keys, shapes, offsets."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # start of each parameter; the last entry is the total size

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> Layout:
        """The layout of ``params``, in their key order."""
        keys = tuple(params)
        shapes = tuple(tuple(int(n) for n in params[k].shape) for k in keys)
        offsets = [0]
        for shape in shapes:
            offsets.append(offsets[-1] + math.prod(shape))
        return cls(keys, shapes, tuple(offsets))

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def flatten(self, tree: Mapping[str, Any], xp: Any) -> Any:
        """The named arrays joined into one vector (N,): one ``concat``."""
        return xp.concat([xp.reshape(tree[k], (-1,)) for k in self.keys])

    def unflatten(self, flat: Any, xp: Any) -> dict[str, Any]:
        """The named parameters as views of ``flat`` (N,) (copies where a library has
        no views, such as JAX outside ``jit``)."""
        spans = zip(self.keys, self.shapes, self.offsets[:-1], self.offsets[1:], strict=True)
        return {key: xp.reshape(flat[a:b], shape) for key, shape, a, b in spans}
