"""Dynamic evaluation: the model keeps learning from the held-out text as it scores it.

Krause, Kahembwe, Murray and Renals, "Dynamic Evaluation of Neural Sequence Models"
(ICML 2018). The held-out text is walked as one stream, T characters (a *segment*)
at a time, the hidden state carried from segment to segment. Each segment is first
scored with the current weights and only then used for one gradient step, so no
character is ever predicted by weights that have seen it. The score and the
gradient come from the same call of :func:`bptt.loss_and_grad` (the library's own
BPTT; its loss is computed in the forward pass, before any update), then:

- ``"sgd"``: theta <- theta - eta g + lambda (theta_0 - theta);
- ``"rms"`` (the paper's rule): theta <- theta - eta g / (rms + eps)
  + min(lambda rms / mean(rms), 1) (theta_0 - theta),

with g the gradient of the segment's mean loss, theta_0 the trained weights and
``rms`` the root mean square of the training loss's gradient at theta_0, gathered
over chunks of the *training* text as the paper does (:func:`gradient_rms`). The
decay pulls every weight back toward theta_0, faster where the training gradient
is larger; it is capped at 1 so that it never overshoots theta_0.

Everything stays on the parameters' device: a segment costs one ``loss_and_grad``
and a few vector operations on the parameters laid out as one flat vector
(:class:`bptt.math.flat.Layout`, so any set of named parameters works), no host sync;
the per-segment scores are read once, at the end. On JAX the segment step is
compiled once by ``jax.jit`` (:func:`bptt.execution.compiled.compile_step`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .. import backends
from ..api.calls import loss_and_grad
from ..backends import device_context
from ..execution.compiled import compile_step
from ..math.flat import Layout
from ..text.data import Streams
from ..train.step import make_plan

__all__ = [
    "RULES",
    "DynamicResult",
    "Score",
    "Update",
    "Walk",
    "WalkCarry",
    "evaluate_dynamic",
    "gradient_rms",
    "layout_walk",
    "make_dynamic_step",
    "make_static_step",
    "rms_chunks",
    "score_dynamic",
    "score_static",
]

LN2 = math.log(2.0)
RULES = ("rms", "sgd")


@dataclass(frozen=True)
class Update:
    """A dynamic-evaluation update: ``rule`` ("rms" or "sgd"), step size ``lr`` (eta),
    ``decay`` (lambda) toward the trained weights and, for "rms", ``eps``. The defaults
    are what tuning chose for the README's model of the built-in text."""

    rule: str = "rms"
    lr: float = 2e-5
    decay: float = 1e-3
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule: expected one of {list(RULES)}; got {self.rule!r}")
        for name in ("lr", "decay", "eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}: expected a number >= 0; got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a number >= 0; got {value!r}")
        if self.rule == "rms" and self.eps <= 0:
            raise ValueError(f"eps: expected a positive number for 'rms'; got {self.eps!r}")

    def describe(self) -> str:
        eps = f", eps {self.eps:g}" if self.rule == "rms" else ""
        return f"{self.rule}: lr {self.lr:g}, decay {self.decay:g}{eps}"


@dataclass
class Walk:
    """A held-out text laid out as one stream on the device, walked in segments.

    Scored: the targets ``ids[start:]``, each predicted from everything before it;
    the state first runs (unscored, no update) over up to ``warmup`` characters
    before ``ids[start - 1]``.
    """

    inputs: Any  # (n, 1) int: ids[start - 1 : -1]
    targets: Any  # (n, 1) int: ids[start:]
    warm_inputs: Any  # (w, 1) int, or None when w = 0
    warm_targets: Any  # (w, 1) int, or None
    seq_len: int  # T, characters per segment
    start: int  # index in ids of the first scored character

    @property
    def count(self) -> int:
        """Scored characters."""
        return int(self.inputs.shape[0])

    def bounds(self) -> list[tuple[int, int]]:
        """[a, b) of each segment; the last may be shorter than T."""
        n, T = self.count, self.seq_len
        return [(a, min(a + T, n)) for a in range(0, n, T)]


def layout_walk(ids: np.ndarray, *, seq_len: int, start: int = 1, warmup: int = 0,
                backend: Any) -> Walk:  # fmt: skip
    """The walk scoring ``ids[start:]`` (host ids) on ``backend``'s device, moved once."""
    ids = np.asarray(ids, dtype=np.int64)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len: expected a positive integer; got {seq_len!r}")
    if not 1 <= start < len(ids):
        raise ValueError(f"start: expected 1 <= start < {len(ids)} (the text's length); "
                         f"got {start!r}")  # fmt: skip
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an integer >= 0; got {warmup!r}")
    w0 = max(0, start - 1 - warmup)  # first warm-up input
    column = ids[:, None]  # (N, 1): one stream
    with backend.activate():
        moved = backend.asarray(column)  # the one host-to-device copy
        warm_in, warm_out = None, None
        if w0 < start - 1:
            warm_in, warm_out = moved[w0 : start - 1, ...], moved[w0 + 1 : start, ...]
        return Walk(moved[start - 1 : -1, ...], moved[start:, ...], warm_in, warm_out,
                    seq_len, start)  # fmt: skip


@dataclass
class Score:
    """What a walk scored: nats per segment (host), their total, bits per character."""

    segments: np.ndarray  # (segments,) float64, summed nats of each segment
    count: int  # scored characters

    @property
    def nats(self) -> float:
        return math.fsum(self.segments.tolist())

    @property
    def bpc(self) -> float:
        return self.nats / (self.count * LN2)


class WalkCarry(NamedTuple):
    """What a segment hands to the next, all on the device."""

    params: Any  # (N,) the current weights, laid out by a Layout
    hidden: Any  # (1, D) the state carried into the next segment (None before the first)
    anchor: Any  # (N,) theta_0, the trained weights
    step_scale: Any  # (N,) or (): eta / (rms + eps) for "rms", eta for "sgd"
    decay: Any  # (N,) or (): the pull toward theta_0 per segment, each in [0, 1]


def _segment_loss_and_grad(layout: Layout, model: Any) -> Any:
    """``f(carry, inputs, targets) -> (nats, grads, h_last)``: the segment's summed loss by
    the pure step of its schedule, resolved once per segment shape
    (:func:`bptt.train.step.make_plan`), as :func:`bptt.loss_and_grad` computes it."""
    plan = make_plan(model, None, "sum")

    def summed(carry: WalkCarry, inputs: Any, targets: Any) -> tuple[Any, Any, Any]:
        xp, _ = backends.namespace_of({"carry.params": carry.params})
        params = layout.unflatten(carry.params, xp)  # views
        run, weights = plan(xp, *inputs.shape[:2], carry.params.dtype)
        with device_context(carry.params):
            return run(params, inputs, targets, h0=carry.hidden, head=model.head,
                       weights=weights, dropout_mask=None, xp=xp, cell=model.cell)  # fmt: skip

    return summed


def make_static_step(layout: Layout, model: Any) -> Any:
    """``step(carry, inputs, targets) -> (carry, nats)``: score a segment, no update.

    The loss is that of :func:`bptt.loss_and_grad`, as the dynamic step scores, so
    that a zero update gives the static scores bit for bit (on NumPy a forward pass
    alone may run on more BLAS threads and differ in the last bits); the gradients
    are dropped (under ``jax.jit`` they are never computed).
    """

    summed = _segment_loss_and_grad(layout, model)

    def static_step(carry: WalkCarry, inputs: Any, targets: Any) -> tuple[WalkCarry, Any]:
        nats, _, h_last = summed(carry, inputs, targets)  # summed over the segment, eq. (B8)
        return carry._replace(hidden=h_last), nats

    return static_step


def make_dynamic_step(layout: Layout, model: Any) -> Any:
    """``step(carry, inputs, targets) -> (carry, nats)``: score a segment with the
    current weights, then one gradient step on it (the rule lives in the carry)."""

    summed = _segment_loss_and_grad(layout, model)

    def dynamic_step(carry: WalkCarry, inputs: Any, targets: Any) -> tuple[WalkCarry, Any]:
        xp, _ = backends.namespace_of({"carry.params": carry.params})
        # the score (0-d, before any update) and its gradient, by BPTT (eq. B8)
        nats, grads, h_last = summed(carry, inputs, targets)
        g = layout.flatten(grads, xp) / (inputs.shape[0] * inputs.shape[1])  # (N,): mean loss
        theta = carry.params  # (N,)
        new = theta - carry.step_scale * g + carry.decay * (carry.anchor - theta)  # (N,)
        return carry._replace(params=new, hidden=h_last), nats

    return dynamic_step


def rms_chunks(n_ids: int, *, seq_len: int, batch: int, chunks: int | None) -> tuple[int, int]:
    """(streams, chunks) :func:`gradient_rms` uses on a training text of ``n_ids`` ids:
    at most ``batch`` streams and ``chunks`` chunks, as many as the text holds."""
    batch = max(1, min(batch, (n_ids - 1) // seq_len - 1))  # as many streams as fit
    whole = Streams(n_ids, batch, seq_len).chunks
    return batch, whole if chunks is None else max(1, min(chunks, whole))


def gradient_rms(params: dict[str, Any], train_ids: np.ndarray, *, seq_len: int, batch: int,
                 chunks: int | None = None, model: Any) -> Any:  # fmt: skip
    """(N,): the root mean square, over chunks of the training text, of the gradient of
    the training loss (mean over a chunk) at ``params``, flat in ``Layout.of(params)``.

    The text is cut into ``batch`` streams as training cuts it (:class:`bptt.text.data.Streams`,
    offset 0) and walked ``seq_len`` characters at a time, the state carried; the first
    ``chunks`` chunks (all if None) are used. On the parameters' device, no host read.
    """
    be = backends.backend_of(next(iter(params.values())))
    xp, layout = be.xp, Layout.of(params)
    need = Streams.min_length(batch=1, seq_len=seq_len)
    if len(train_ids) < need:
        raise ValueError(
            f"train_ids: {len(train_ids)} characters are too few for chunks of "
            f"{seq_len}; need at least {need}"
        )
    batch, n = rms_chunks(len(train_ids), seq_len=seq_len, batch=batch, chunks=chunks)
    streams = Streams(len(train_ids), batch, seq_len)
    matrix = streams.epoch_matrix(np.asarray(train_ids, dtype=np.int64), 0)[: n * seq_len + 1]
    with be.activate():
        data = be.asarray(matrix)  # (n T + 1, B), moved once
        total, h = None, None
        for k in range(n):
            x, y = (
                data[k * seq_len : (k + 1) * seq_len, ...],
                data[k * seq_len + 1 : (k + 1) * seq_len + 1, ...],
            )
            _, grads, h = loss_and_grad(model, params, x, y, h0=h, check_values=False)
            g = layout.flatten(grads, xp)  # (N,)
            total = g * g if total is None else total + g * g
        return xp.sqrt(total / n)


def _start_carry(params: dict[str, Any], update: Update | None, rms: Any) -> WalkCarry:
    """The carry before the first segment: theta = theta_0 and the rule's constants."""
    be = backends.backend_of(next(iter(params.values())))
    xp, layout = be.xp, Layout.of(params)
    flat = layout.flatten(params, xp)  # (N,)
    dtype = flat.dtype

    def scalar(v: float) -> Any:
        return xp.asarray(v, dtype=dtype, device=be.device)

    if update is None or update.rule == "sgd":
        lr, decay = (0.0, 0.0) if update is None else (update.lr, update.decay)
        return WalkCarry(flat, None, flat, scalar(lr), scalar(decay))
    if rms is None or tuple(rms.shape) != (layout.size,):
        raise ValueError(
            f"rms: the 'rms' rule needs the gradient's RMS, shape ({layout.size},), "
            f"from gradient_rms; got {None if rms is None else tuple(rms.shape)}"
        )
    rms = xp.astype(rms, dtype)
    relative = rms / xp.mean(rms)  # (N,): mean 1
    decay = xp.minimum(update.decay * relative, scalar(1.0))  # capped: never past theta_0
    return WalkCarry(flat, None, flat, update.lr / (rms + update.eps), decay)


_STEPS: dict[tuple[Any, ...], tuple[Any, Any]] = {}  # (step, compiled step), reused


def _steps(make: Any, layout: Layout, be: Any, carry: WalkCarry, seq_len: int,
           compile: str, model: Any) -> tuple[Any, Any]:  # fmt: skip
    """The step ``make(layout, model)`` and its compiled form, made once per
    kind, layout, device and carry shapes: a tuning grid on JAX compiles one ``jax.jit``
    step, not one per try."""
    shapes = tuple(tuple(a.shape) for a in (carry.params, carry.step_scale, carry.decay))
    key = (make, layout, be.name, str(be.device), str(carry.params.dtype), shapes, seq_len,
           compile, model)  # fmt: skip
    if key not in _STEPS:
        if len(_STEPS) >= 16:  # a few kinds and shapes per process: bounded all the same
            _STEPS.clear()
        step = make(layout, model)
        _STEPS[key] = step, compile_step(step, be, compile)
    return _STEPS[key]


def _walk(params: dict[str, Any], walk: Walk, make: Any, carry: WalkCarry,
          compile: str, model: Any) -> Score:  # fmt: skip
    """Warm up the state, then run the step ``make`` makes over every segment; one host
    read. Whole segments after the first run compiled (one traced shape); the first
    (no state yet) and a short last one run the same step eagerly."""
    be = backends.backend_of(next(iter(params.values())))
    layout = Layout.of(params)
    step, compiled = _steps(make, layout, be, carry, walk.seq_len, compile, model)
    scores = []
    with be.activate():
        if walk.warm_inputs is not None:  # unscored, no update
            warm = make_static_step(layout, model)
            carry, _ = warm(carry, walk.warm_inputs, walk.warm_targets)
        for a, b in walk.bounds():
            full = b - a == walk.seq_len and carry.hidden is not None
            carry, nats = (compiled if full else step)(
                carry, walk.inputs[a:b, ...], walk.targets[a:b, ...]
            )
            scores.append(nats)
        host = be.to_numpy(be.xp.stack(scores))  # the one read
    return Score(np.asarray(host, dtype=np.float64), walk.count)


def score_static(params: dict[str, Any], walk: Walk, *, compile: str = "auto",
                 model: Any) -> Score:  # fmt: skip
    """The walk's characters scored with fixed weights (carrying the state)."""
    carry = _start_carry(params, None, None)
    return _walk(params, walk, make_static_step, carry, compile, model)


def score_dynamic(params: dict[str, Any], walk: Walk, update: Update, *, rms: Any = None,
                  compile: str = "auto", model: Any) -> Score:  # fmt: skip
    """The walk's characters scored by dynamic evaluation with ``update``.

    Each segment is scored before its own gradient step. ``rms``: the (N,) array of
    :func:`gradient_rms`, needed by the "rms" rule. ``params`` are not changed.
    """
    carry = _start_carry(params, update, rms)
    return _walk(params, walk, make_dynamic_step, carry, compile, model)


@dataclass
class DynamicResult:
    """The honest protocol of :func:`evaluate_dynamic`: settings chosen on a tuning
    part that is then not scored; the rest scored statically and dynamically."""

    tuning: list[tuple[Update, float]]  # each candidate's bits/char on the tuning part
    chosen: Update
    tune_chars: int  # the first tune_chars scored-able characters, not scored
    static: Score  # the rest, fixed weights
    dynamic: Score  # the rest, dynamic evaluation with ``chosen``
    seconds: dict[str, float] = field(default_factory=dict)  # "tuning", "static", "dynamic"


def evaluate_dynamic(params: dict[str, Any], ids: np.ndarray, candidates: list[Update], *,
                     tune_chars: int, seq_len: int, warmup: int, backend: Any, rms: Any = None,
                     compile: str = "auto",
                     model: Any) -> DynamicResult:  # fmt: skip
    """Choose among ``candidates`` on the targets ids[1 : tune_chars + 1], then score
    ids[tune_chars + 1 :] with fixed weights and with the chosen update, both from the
    trained weights and a state warmed on the ``warmup`` characters before.

    With one candidate ``tune_chars`` may be 0 (nothing tuned: every character scored).
    """
    if not candidates:
        raise ValueError("candidates: expected at least one Update")
    if isinstance(tune_chars, bool) or not isinstance(tune_chars, int) or tune_chars < 0:
        raise ValueError(f"tune_chars: expected an integer >= 0; got {tune_chars!r}")
    if tune_chars == 0 and len(candidates) > 1:
        raise ValueError(f"tune_chars: choosing among {len(candidates)} settings needs a "
                         "tuning part (tune_chars > 0) that is then not scored")  # fmt: skip
    if tune_chars + 1 >= len(ids):
        raise ValueError(f"tune_chars: {tune_chars} leaves nothing to score in a text of "
                         f"{len(ids)} characters")  # fmt: skip
    tuning, clock = [], time.perf_counter()
    if tune_chars > 0 and len(candidates) > 1:
        part = layout_walk(ids[: tune_chars + 1], seq_len=seq_len, backend=backend)
        for update in candidates:
            score = score_dynamic(params, part, update, rms=rms, compile=compile,
                                  model=model)  # fmt: skip
            tuning.append((update, score.bpc))
    finite = [(u, bpc) for u, bpc in tuning if math.isfinite(bpc)]
    if tuning and not finite:
        tried = "; ".join(f"{u.describe()}: {bpc}" for u, bpc in tuning)
        raise FloatingPointError(
            f"dynamic evaluation: every setting diverged (NaN or infinite bits/char) on the "
            f"tuning part, the first {tune_chars:,} characters ({tried}); no finite setting "
            "to score with: try smaller step sizes (--lr)"
        )
    chosen = min(finite, key=lambda t: t[1])[0] if finite else candidates[0]
    rest = layout_walk(ids, seq_len=seq_len, start=tune_chars + 1, warmup=warmup,
                       backend=backend)  # fmt: skip
    seconds = {"tuning": time.perf_counter() - clock}
    clock = time.perf_counter()
    static = score_static(params, rest, compile=compile, model=model)  # one read
    seconds["static"], clock = time.perf_counter() - clock, time.perf_counter()
    dynamic = score_dynamic(params, rest, chosen, rms=rms, compile=compile,
                            model=model)  # fmt: skip
    seconds["dynamic"] = time.perf_counter() - clock
    if not math.isfinite(static.bpc):
        raise FloatingPointError(
            f"static scoring: {static.bpc} bits/char: the trained weights overflow on this "
            "text (NaN or infinite logits); nothing finite to compare against"
        )
    if not math.isfinite(dynamic.bpc):
        where = "finite on the tuning part, " if tuning else ""
        raise FloatingPointError(
            f"dynamic evaluation diverged with {chosen.describe()}: {dynamic.bpc} bits/char "
            f"on the scored text ({where}static {static.bpc:.4f}); try a smaller --lr"
        )
    return DynamicResult(tuning, chosen, tune_chars, static, dynamic, seconds)
