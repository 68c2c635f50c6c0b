"""The training step as one pure function: dropout, loss and gradients, clip, update.

``train_step(carry, inputs, targets) -> (carry, loss, norm)``, made by
:func:`make_train_step`, is the step ``bptt train`` runs: the same array operations
whatever the data (no value-dependent control flow), no host sync, no host-to-device
copy (the dropout mask is drawn on the device from the seed and a device step
counter), and the parameters as one flat vector so that the optimizer's cost does
not grow with the number of parameter arrays. So it is what ``jax.jit`` compiles and
what a CUDA graph captures (:mod:`bptt.execution.compiled`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .. import optim
from ..backends import device_context, namespace_of
from ..execution import schedules
from ..math import remat as _remat
from ..math.flat import Layout
from ..math.heads import loss_weights
from ..numerics import random

__all__ = ["Tally", "TrainCarry", "make_gradients", "make_plan", "make_train_step"]


class TrainCarry(NamedTuple):
    """What a step hands to the next, all on the device."""

    params: Any  # (N,) every parameter, laid out by a Layout
    opt_state: Any  # the optimizer's state over that vector
    hidden: Any  # (B, D) or (L K, B, D) (LSTM: (2, ...), h and c): carried to the next chunk
    step: Any  # 0-d integer: updates done, the dropout stream's counter


def make_plan(
    model: Any, schedule: str | None, reduction: str, remat: Any = None
) -> Callable[..., Any]:
    """``plan(xp, T, B, dtype) -> (run, weights)``: the pure step of the schedule chosen
    for (T, B) chunks of ``model`` (:func:`bptt.execution.schedules.runner`, taking the arguments
    of :func:`bptt.math.step.loss_and_grad`; memory-bounded with ``remat``) and the loss
    weights of ``reduction``, resolved on the first chunk of each shape: a step built on
    it reads no environment and checks no argument when it runs."""
    remat = _remat.check(remat, model.directions)
    resolved: dict[tuple[Any, ...], tuple[Any, Any]] = {}

    def plan(xp: Any, T: int, B: int, dtype: Any) -> tuple[Any, Any]:
        key = (xp.__name__, T, B, str(dtype))
        if key not in resolved:
            itemsize = xp.finfo(dtype).bits // 8
            _, run = schedules.runner(schedule, xp, T, B, model.hidden_size, itemsize,
                                      single=model.single_vanilla, remat=remat)  # fmt: skip
            weights = loss_weights(None, (T, B, model.output_size), head=model.head,
                                   reduction=reduction, dtype=dtype, xp=xp)  # fmt: skip
            resolved[key] = run, weights
        return resolved[key]

    return plan


def make_gradients(
    layout: Layout,
    *,
    dropout: float = 0.0,
    seed: int = 0,
    schedule: str | None = None,
    model: Any,
    columns: tuple[int, int, int] | None = None,
    remat: Any = None,
) -> Callable[[TrainCarry, Any, Any], tuple[Any, Any, Any]]:
    """``gradients(carry, inputs, targets) -> (loss, grads, h_last)``: the chunk's mean
    loss, its gradients by name and the state to carry on.

    ``model``: the :class:`bptt.RNN` the layout's parameters belong to. The step calls
    the pure step of the schedule chosen for its shape (:mod:`bptt.execution.schedules`),
    resolved once per chunk shape with the loss weights; no argument check runs per
    step (the trainer checks the first chunk, values included).
    With ``dropout`` > 0 the states before V are dropped with masks drawn from
    (``seed``, step); in a stack of L layers (any architecture the layout names,
    :mod:`bptt.math.layers`) every layer's output is, the L masks drawn in one call as an
    (L, T, B, K D) array (mask L - 1 before V, mask l between layers l and l + 1).
    ``columns`` = (start, stop, batch): these inputs are streams start:stop of a batch
    of ``batch`` (one rank's share, :mod:`bptt.train.parallel`), and their masks are
    those rows of the whole batch's masks, as one process draws them.
    """
    arch = model.arch
    width = arch.directions * model.hidden_size  # K D
    plan = make_plan(model, schedule, "mean", remat)

    def gradients(carry: TrainCarry, inputs: Any, targets: Any) -> tuple[Any, Any, Any]:
        xp, device = namespace_of({"carry.params": carry.params, "carry.hidden": carry.hidden})
        params = layout.unflatten(carry.params, xp)  # views
        mask = layer_masks = None
        if dropout > 0:  # decided once: the same operations every step
            batch = inputs.shape[1] if columns is None else columns[2]
            shape = (inputs.shape[0], batch, width)  # (T, B, K D)
            if arch.layers > 1:
                shape = (arch.layers, *shape)  # every layer's mask in one draw
            mask = random.dropout_mask(seed, carry.step, shape, dropout, xp=xp, device=device,
                                       dtype=carry.params.dtype)  # fmt: skip
            if columns is not None:  # this rank's streams: (..., T, B/N, K D)
                mask = mask[..., columns[0] : columns[1], :]
            if arch.layers > 1:
                mask, layer_masks = mask[-1, ...], [mask[i, ...] for i in range(arch.layers - 1)]
        run, weights = plan(xp, *inputs.shape[:2], carry.params.dtype)
        with device_context(carry.params):
            loss, grads, h_last = run(
                params, inputs, targets, h0=model.unpack_state(carry.hidden), head=model.head,
                weights=weights, dropout_mask=mask, xp=xp, cell=model.cell,
                layer_masks=layer_masks,
            )  # the pure step  # fmt: skip
        return loss, grads, model.pack_state(h_last, xp)  # one carried array, (2, ...) for LSTM

    return gradients


def make_train_step(
    optimizer: optim.GradientTransformation,
    layout: Layout,
    *,
    dropout: float = 0.0,
    seed: int = 0,
    schedule: str | None = None,
    model: Any,
    remat: Any = None,
) -> Callable[[TrainCarry, Any, Any], tuple[TrainCarry, Any, Any]]:
    """The step for ``optimizer`` over parameters laid out by ``layout``.

    Returns ``train_step(carry, inputs, targets) -> (carry, loss, norm)``: ``loss``
    the chunk's mean loss in nats per character, ``norm`` the gradient's global norm
    before clipping (recorded by the optimizer's clip, or computed). Dropout as in
    :func:`make_gradients`. ``carry.hidden`` is (B, D) for one layer, (L K, B, D) for
    a stack. ``remat``: memory-bounded BPTT (:mod:`bptt.math.remat`).
    """
    gradients = make_gradients(layout, dropout=dropout, seed=seed, schedule=schedule,
                               model=model, remat=remat)  # fmt: skip

    def train_step(carry: TrainCarry, inputs: Any, targets: Any) -> tuple[TrainCarry, Any, Any]:
        xp, _ = namespace_of({"carry.params": carry.params})
        loss, grads, h_last = gradients(carry, inputs, targets)
        g = layout.flatten(grads, xp)  # (N,): one concat
        updates, opt_state = optimizer.update(g, carry.opt_state, carry.params)
        norm = optim.last_norm(opt_state)
        if norm is None:
            norm = optim.global_norm(g)
        new = TrainCarry(carry.params + updates, opt_state, h_last, carry.step + 1)
        return new, loss, norm

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
