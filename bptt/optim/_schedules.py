"""Learning-rate schedules: functions of the device update count, evaluated on the device."""

from __future__ import annotations

from typing import Any

from ._base import number
from ._transforms import Schedule

__all__ = ["constant_schedule", "exponential_decay"]


def exponential_decay(lr: float, *, rate: float, every: int) -> Schedule:
    """lr_k = lr rate^(k / every): multiplied by ``rate`` every ``every`` updates, smoothly.

    ``k`` is the count of earlier updates, a 0-d device array; so is the result.
    """
    lr = number("lr", lr, lambda v: v > 0, "a positive learning rate")
    rate = number("rate", rate, lambda v: 0 < v <= 1, "a factor in (0, 1]")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every: expected a positive integer; got {every!r}")

    def schedule(count: Any) -> Any:
        return lr * rate ** (count / every)

    return schedule


def constant_schedule(lr: float) -> Schedule:
    """lr_k = lr. As a schedule, the update keeps a count (one state shape for a run
    whose decay may change when it resumes) but bakes in one constant rate."""
    lr = number("lr", lr, lambda v: v > 0, "a positive learning rate")
    return lambda count: lr
