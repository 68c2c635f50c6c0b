"""The training step as one pure function: loss and gradients, clipping, update.

:func:`make_train_step` returns ``train_step(params, opt_state, hidden, inputs,
targets, dropout_mask) -> StepResult``: no host sync, no value-dependent control
flow, the same operations whatever the data. It is what ``jax.jit`` compiles and
what a CUDA graph captures. :class:`Tally` is the loop's device-side record of the
losses and of the first non-finite step, read once per log interval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .. import optim
from ..api import loss_and_grad

__all__ = ["StepResult", "Tally", "make_train_step"]


class StepResult(NamedTuple):
    params: dict[str, Any]  # after the update
    opt_state: Any
    hidden: Any  # (B, D): the state to carry into the next chunk (no gradient across)
    loss: Any  # 0-d: the chunk's mean loss, in nats per character
    norm: Any  # 0-d: the global gradient norm before clipping


def make_train_step(
    optimizer: optim.GradientTransformation, *, schedule: str | None = None
) -> Callable[..., StepResult]:
    """The step for ``optimizer`` (clipping included, if the optimizer clips)."""

    def train_step(
        params: dict[str, Any],
        opt_state: Any,
        hidden: Any,
        inputs: Any,
        targets: Any,
        dropout_mask: Any = None,
    ) -> StepResult:
        loss, grads, h_last = loss_and_grad(
            params, inputs, targets, h0=hidden, dropout_mask=dropout_mask,
            check_values=False, schedule=schedule,
        )  # fmt: skip
        updates, opt_state = optimizer.update(grads, opt_state, params)
        norm = optim.last_norm(opt_state)  # recorded by the clip, if there is one
        if norm is None:
            norm = optim.global_norm(grads)
        return StepResult(optim.apply_updates(params, updates), opt_state, h_last, loss, norm)

    return train_step


class Tally(NamedTuple):
    """Device-side sums since the last log: no step reads the device.

    ``finite_steps`` counts the steps before the first non-finite loss or norm: the
    running sum of loss + norm stays finite until then and never after (both are
    >= 0, so no infinity cancels).
    """

    loss_sum: Any  # 0-d, nats
    running: Any  # 0-d: sum of loss + norm
    finite_steps: Any  # 0-d: steps whose running sum was still finite

    @classmethod
    def zero(cls, xp: Any, dtype: Any, device: Any) -> Tally:
        zero = xp.zeros((), dtype=dtype, device=device)
        return cls(zero, zero, zero)

    def add(self, loss: Any, norm: Any, xp: Any) -> Tally:
        running = self.running + (loss + norm)
        finite = xp.astype(xp.isfinite(running), running.dtype)
        return Tally(self.loss_sum + loss, running, self.finite_steps + finite)
