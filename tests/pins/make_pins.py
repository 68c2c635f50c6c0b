"""Bit pins: sha256 digests of bptt's exact NumPy results, so a refactor can prove it
changed no bit.

``numpy_bits.json`` (an AVX-512 machine) and ``numpy_bits_avx2.json`` (this
project's AVX2 machine, where CI runs) beside this file were written from this round's code (the
flat-parameter training step, the stacked recurrences) in the project's test
environment with::

    python tests/pins/make_pins.py --out tests/pins/numpy_bits.json

(the first pins, from commit cb4b3de, proved the schedules refactor bit-exact;
they are in git history at 97c4689), or from a source tree that is not installed::

    python tests/pins/make_pins.py --tree /work/old --out tests/pins/numpy_bits.json

Check the bptt that this interpreter imports against the pins (exit status 1 on a
mismatch, 2 when the environment differs, as the bits depend on it)::

    python tests/pins/make_pins.py --check tests/pins/numpy_bits.json

The bits depend on NumPy's version and build, the BLAS library, its kernel for
this CPU (threadpoolctl's ``architecture``), the CPU's SIMD features and, for
the training cases, the Python version (the built-in text is pydoc's topics):
:func:`environment` records them and :func:`comparable` says whether two records
allow a comparison. ``BPTT_THREADS`` is set to :data:`THREADS` while computing
(:func:`pinned_env`), so that the forced batch split cuts the batch the same way
on every machine.

Inputs are built here with NumPy alone, from seeds (:func:`problem`); only public
API is called: ``loss_and_grad``, ``optim``, ``Trainer``/``TrainConfig``/``Corpus``.
The few calls whose API is changing go through :func:`forced_schedule` and
:func:`make_optimizer`, each of which accepts the old and the new API. Each case in
the JSON holds its recipe: ``run_case(kind, recipe)`` recomputes it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = 1
THREADS = "2"  # BPTT_THREADS while computing: the forced split makes 2 parts everywhere
GRAD_KEYS = ("U", "W", "V", "b", "c")
REPEATS = 3  # each case is computed this many times; all must give the same bits
SCHEDULE_VARIABLES = ("BPTT_SCHEDULE", "BPTT_OVERLAP", "BPTT_SPLIT")


# ---- importing bptt ------------------------------------------------------------------------


def use_tree(tree: str | os.PathLike) -> None:
    """Import ``bptt`` from the source tree ``tree``, ahead of any installed one.

    The package config maps ``bptt.backends`` to ``backends/`` at the top of the
    tree; this finder does the same where ``bptt/backends/`` does not exist.
    """
    root = Path(tree).resolve()

    def spec(name: str, folder: Path) -> Any:
        return importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )

    class TreeFinder:
        @staticmethod
        def find_spec(name: str, path: Any = None, target: Any = None) -> Any:
            if name == "bptt":
                return spec(name, root / "bptt")
            if name == "bptt.backends" and not (root / "bptt" / "backends").is_dir():
                return spec(name, root / "backends")
            return None

    sys.meta_path.insert(0, TreeFinder)


def source_of(bptt: Any) -> dict[str, Any]:
    """The commit of the tree that ``bptt`` was imported from, and whether it was clean."""
    folder = Path(bptt.__file__).resolve().parent
    try:
        run = dict(cwd=folder, capture_output=True, text=True, check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", "."], **run).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "clean": None}
    return {"commit": commit, "clean": not status.strip()}


# ---- the environment the bits depend on ----------------------------------------------------


def environment() -> dict[str, Any]:
    import threadpoolctl

    blas = [
        {k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
        for info in threadpoolctl.threadpool_info()
        if info.get("user_api") == "blas"
    ]
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # NumPy < 2
        features = {}
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "numpy": np.__version__,
        "blas": blas,
        "cpu_features": sorted(k for k, v in features.items() if v),
        "bptt_threads": THREADS,
    }


def comparable(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two environments in ways that change bits ([] if nothing).

    BLAS's thread count is left out: every schedule gives the same bits on any count.
    """
    differ = [
        k
        for k in ("python", "machine", "numpy", "cpu_features", "bptt_threads")
        if a.get(k) != b.get(k)
    ]
    strip = [
        [{k: v for k, v in x.items() if k != "num_threads"} for x in e.get("blas", [])]
        for e in (a, b)
    ]
    return differ + (["blas"] if strip[0] != strip[1] else [])


@contextmanager
def pinned_env() -> Iterator[None]:
    """``BPTT_THREADS`` = :data:`THREADS`, no schedule variables; restored afterwards."""
    names = ("BPTT_THREADS", *SCHEDULE_VARIABLES)
    saved = {k: os.environ.get(k) for k in names}
    for k in SCHEDULE_VARIABLES:
        os.environ.pop(k, None)
    os.environ["BPTT_THREADS"] = THREADS
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- digests -------------------------------------------------------------------------------


def digest(array: Any) -> str:
    """sha256 of the array's bytes in C order (a 0-d array: its one value)."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(array)).tobytes()).hexdigest()


def float_fields(name: str, value: Any) -> dict[str, Any]:
    """``name`` as a JSON float (exact: repr round-trips) and as 17 significant digits."""
    x = float(value)
    return {name: x, f"{name}_17g": format(x, ".17g")}


@contextmanager
def watch_threads() -> Iterator[dict[str, Any]]:
    """Records, inside the block, the BLAS thread limits asked of threadpoolctl and the
    thread pools given work (their name prefixes)."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import ThreadpoolController

    asked: set[Any] = set()
    pools: set[str] = set()
    original_limit, original_submit = ThreadpoolController.limit, ThreadPoolExecutor.submit

    def limit(self: Any, *, limits: Any = None, **kw: Any) -> Any:
        asked.add(limits)
        return original_limit(self, limits=limits, **kw)

    def submit(self: Any, *args: Any, **kw: Any) -> Any:
        pools.add(self._thread_name_prefix)
        return original_submit(self, *args, **kw)

    seen: dict[str, Any] = {}
    ThreadpoolController.limit = limit  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = submit  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        ThreadpoolController.limit = original_limit  # type: ignore[method-assign]
        ThreadPoolExecutor.submit = original_submit  # type: ignore[method-assign]
        seen["blas_limits"] = sorted(asked, key=str)
        seen["thread_pools"] = sorted(pools)


# ---- inputs --------------------------------------------------------------------------------


def problem(
    *,
    seed: int,
    T: int,
    B: int,
    M: int,
    D: int,
    C: int,
    dtype: str,
    inputs: str = "ids",
    head: str = "softmax",
    reduction: str = "mean",
    mask: bool = False,
    h0: bool = False,
    dropout: float = 0.0,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
    """``(params, inputs, targets, kwargs)`` for ``loss_and_grad``, NumPy only.

    Each part has its own generator ``default_rng([seed, k])``, so turning one
    option on or off leaves the others' values alone. Parameters: U, W, V from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), b and c from U(-0.1, 0.1), all drawn in
    float64 and cast. ``inputs``: "ids" (T, B) int64 or "dense" (T, B, M) normal.
    ``dropout`` > 0: multipliers 0 or 1/(1 - p) (T, B, D), kept where a float64
    uniform >= p. ``mask``: (T, B) bool, False where a uniform < 0.2.
    """
    dt = np.dtype(dtype)

    def rng(k: int) -> np.random.Generator:
        return np.random.default_rng([seed, k])

    params = {}
    for k, (key, shape) in enumerate(
        [("U", (D, M)), ("W", (D, D)), ("V", (C, D)), ("b", (D,)), ("c", (C,))]
    ):
        bound = 1.0 / np.sqrt(shape[1]) if len(shape) == 2 else 0.1
        params[key] = rng(k).uniform(-bound, bound, size=shape).astype(dt)
    if inputs == "ids":
        x = rng(10).integers(0, M, size=(T, B), dtype=np.int64)
    elif inputs == "dense":
        x = rng(10).standard_normal((T, B, M)).astype(dt)
    else:
        raise ValueError(f"inputs: 'ids' or 'dense', not {inputs!r}")
    if head == "softmax":
        y = rng(11).integers(0, C, size=(T, B), dtype=np.int64)
    else:
        y = (rng(11).random((T, B, C)) < 0.5).astype(dt)
    kwargs: dict[str, Any] = {"head": head, "reduction": reduction}
    if mask:
        kwargs["mask"] = rng(12).random((T, B)) >= 0.2
    if h0:
        kwargs["h0"] = rng(13).uniform(-0.5, 0.5, size=(B, D)).astype(dt)
    if dropout:
        keep = rng(14).random((T, B, D)) >= dropout
        kwargs["dropout_mask"] = np.where(keep, dt.type(1.0 / (1.0 - dropout)), dt.type(0))
    return params, x, y, kwargs


# ---- calls whose API is changing: each accepts the old and the new one ---------------------


def _takes_schedule(bptt: Any) -> bool:
    """Whether ``bptt.loss_and_grad`` takes ``schedule=``: in its signature, or (since
    bptt.RNN, where it passes its keywords on) in ``bptt.api.calls.loss_and_grad``'s."""
    if "schedule" in inspect.signature(bptt.loss_and_grad).parameters:
        return True
    api = getattr(bptt, "api", None)
    return api is not None and "schedule" in inspect.signature(api.loss_and_grad).parameters


@contextmanager
def forced_schedule(name: str) -> Iterator[dict[str, Any]]:
    """Extra ``loss_and_grad`` keywords that run schedule ``name`` ("auto", "single",
    "overlap" or "split"): ``schedule=`` where loss_and_grad takes it, else (up to
    cb4b3de) the switches of ``bptt._parallel``, restored afterwards."""
    import bptt

    if _takes_schedule(bptt):
        yield {} if name == "auto" else {"schedule": name}
        return
    parallel = importlib.import_module("bptt._parallel")
    modes = {
        "auto": (None, None),
        "single": ("off", "off"),
        "overlap": ("on", "off"),
        "split": ("off", "on"),
    }
    overlap, split = modes[name]
    parallel.set_overlap(overlap)
    parallel.set_split(split)
    try:
        yield {}
    finally:
        parallel.set_overlap(None)
        parallel.set_split(None)


def make_optimizer(name: str, lr: Any, options: dict[str, Any], clip: float) -> tuple[Any, Any]:
    """``(init, step)``, ``step(params, grads, state) -> (params, state)``: the gradients
    clipped to global norm ``clip``, then ``bptt.optim.<name>(lr, **options)``; ``lr`` a
    float or ``["exponential_decay", lr, rate, every]``.

    Optax-style API (where ``bptt.optim.apply_updates`` exists): ``chain(
    clip_by_global_norm(clip), opt)``, ``update(grads, state, params)``, ``apply_updates``.
    Old API: ``clip_by_global_norm(grads, clip)`` -> ``(grads, norm)``, then
    ``update(params, grads, state)``.

    ``options["l2"]`` is a decay added to the gradient before the optimizer's scaling
    (coupled); ``options["weight_decay"]`` one added after it (decoupled, AdamW).
    Up to cb4b3de sgd, adagrad and rmsprop had only the coupled one, named
    ``weight_decay``, and adam only the decoupled one: ``l2`` is renamed for them.
    """
    import bptt

    optim = bptt.optim
    if isinstance(lr, list):
        _, base, rate, every = lr
        lr = optim.exponential_decay(base, rate=rate, every=every)
    new_api = hasattr(optim, "apply_updates")
    if not new_api and "l2" in options:
        assert name != "adam" and "weight_decay" not in options, (name, options)
        options = {**{k: v for k, v in options.items() if k != "l2"}, "weight_decay": options["l2"]}
    opt = getattr(optim, name)(lr, **options)
    if new_api:
        opt = optim.chain(optim.clip_by_global_norm(clip), opt)

        def step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
            updates, state = opt.update(grads, state, params)
            return optim.apply_updates(params, updates), state

        return opt.init, step

    def old_step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        return opt.update(params, optim.clip_by_global_norm(grads, clip)[0], state)

    return opt.init, old_step


# ---- the cases -----------------------------------------------------------------------------

SMALL = {"T": 7, "B": 5, "M": 6, "D": 8, "C": 6}
LOSS_PROBLEMS = {
    "softmax_ids": {"inputs": "ids", "mask": True, "h0": True, "dropout": 0.25},
    "softmax_dense": {"inputs": "dense", "mask": True, "h0": True, "dropout": 0.25},
    "sigmoid_ids_sum": {"inputs": "ids", "head": "sigmoid", "reduction": "sum"},
    "sigmoid_dense_sum": {"inputs": "dense", "head": "sigmoid", "reduction": "sum", "h0": True},
}
OVERLAP_SIZE = {"T": 20, "B": 64, "M": 50, "D": 128, "C": 50}
SPLIT_SIZE = {"T": 10, "B": 64, "M": 50, "D": 64, "C": 50}
FULL = {"mask": True, "h0": True, "dropout": 0.25}
OPTIM_PROBLEM = LOSS_PROBLEMS["sigmoid_dense_sum"]  # gradient norm ~17.7: clipping at 0.5 acts
OPTIMIZERS = {
    "sgd": ("sgd", 1e-2, {"momentum": 0.9, "l2": 0.01}),
    "adagrad": ("adagrad", 1e-2, {}),
    "rmsprop": ("rmsprop", 1e-2, {}),
    "adam": ("adam", 1e-2, {"weight_decay": 0.1}),
    "adam_exponential_decay": ("adam", ["exponential_decay", 1e-2, 0.5, 2], {}),
}
TRAIN_BASE = {
    "hidden": 32,
    "batch": 8,
    "seq_len": 20,
    "dropout": 0.1,
    "weight_decay": 0.1,
    "clip": 1.0,
    "eval_every": 10,
    "log_every": 5,
    "seed": 3,
    "sample_length": 20,
}
TRAIN_RUNS = {
    "adam": {},
    "sgd_momentum": {"optimizer": "sgd", "momentum": 0.9},
    "adam_no_dropout": {"dropout": 0.0},
}


def recipes() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every case: name -> (kind, recipe), the recipe plain JSON."""
    cases: dict[str, tuple[str, dict[str, Any]]] = {}
    for dtype in ("float64", "float32"):
        for name, opts in LOSS_PROBLEMS.items():
            recipe = {"problem": {"seed": 7, **SMALL, "dtype": dtype, **opts}, "schedule": "auto"}
            cases[f"loss_and_grad/{name}/{dtype}"] = ("loss_and_grad", recipe)
    for schedule, size, dtypes in (
        ("overlap", OVERLAP_SIZE, ("float32", "float64")),
        ("split", SPLIT_SIZE, ("float64", "float32")),
    ):
        for dtype in dtypes:
            for variant, opts in (("ids", {"h0": True}), ("full", FULL)):
                p = {"seed": 11, **size, "dtype": dtype, **opts}
                for sched in (schedule, "single"):
                    recipe = {"problem": p, "schedule": sched}
                    cases[f"schedule/{schedule}_size/{sched}/{variant}/{dtype}"] = (
                        "loss_and_grad",
                        recipe,
                    )
    for dtype in ("float64", "float32"):
        for name, (opt, lr, options) in OPTIMIZERS.items():
            recipe = {
                "problem": {"seed": 7, **SMALL, "dtype": dtype, **OPTIM_PROBLEM},
                "optimizer": opt,
                "lr": lr,
                "options": options,
                "clip": 0.5,
                "updates": 3,
            }
            cases[f"optim/{name}/{dtype}"] = ("optim", recipe)
    for name, overrides in TRAIN_RUNS.items():
        recipe = {
            "text": ["topics", 20000],
            "source": "pin",
            "config": {**TRAIN_BASE, **overrides},
            "steps": 20,
        }
        cases[f"train/{name}"] = ("train", recipe)
    return cases


def run_loss_and_grad(recipe: dict[str, Any]) -> dict[str, Any]:
    import bptt

    params, x, y, kwargs = problem(**recipe["problem"])
    with forced_schedule(recipe["schedule"]) as extra, watch_threads() as seen:
        loss, grads, h_last = bptt.loss_and_grad(params, x, y, **kwargs, **extra)
    assert list(grads) == list(GRAD_KEYS), list(grads)
    digests = {"loss": digest(loss), **{k: digest(grads[k]) for k in GRAD_KEYS}}
    digests["h_last"] = digest(h_last)
    return {**float_fields("loss", loss), "digests": digests, "threads": seen}


def run_optim(recipe: dict[str, Any]) -> dict[str, Any]:
    import bptt

    params, x, y, kwargs = problem(**recipe["problem"])
    _, grads, _ = bptt.loss_and_grad(params, x, y, **kwargs)
    norm = float(np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads.values())))
    assert norm > recipe["clip"], "the clipping must be active"
    init, step = make_optimizer(
        recipe["optimizer"], recipe["lr"], recipe["options"], recipe["clip"]
    )
    state = init(params)
    for _ in range(recipe["updates"]):
        params, state = step(params, grads, state)
    return {
        "grad_norm": norm,
        "grad_digests": {k: digest(grads[k]) for k in GRAD_KEYS},
        "digests": {k: digest(params[k]) for k in GRAD_KEYS},
    }


def training_text(name: str, chars: int) -> str:
    from bptt.text import data

    return data.builtin_text(name)[:chars]


def run_train(recipe: dict[str, Any]) -> dict[str, Any]:
    from bptt import train
    from bptt.text import data

    text = training_text(*recipe["text"])
    corpus = data.Corpus.from_text(text, source=recipe["source"])
    samples: list[str] = []
    reporter = {}
    if hasattr(train, "Reporter"):  # the samples are kept where the API allows

        class Keep(train.Reporter):
            def on_eval(self, step: int, val_bpc: float, is_best: bool, text: str) -> None:
                samples.append(text)

        reporter = {"reporter": Keep()}
    make = getattr(train.TrainConfig, "from_stored", None)  # reads the old weight_decay
    config = make(recipe["config"]) if make else train.TrainConfig(**recipe["config"])
    trainer = train.Trainer.create(corpus, config, backend="numpy")
    result = trainer.run(steps=recipe["steps"], **reporter)
    params = {k: np.asarray(v) for k, v in trainer.params.items()}
    history = {k: [float(x) for x in v] for k, v in trainer.history.items()}
    return {
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        **float_fields("last_val", result.last_val),
        "history": history,
        "digests": {
            **{k: digest(params[k]) for k in GRAD_KEYS},
            **{f"history.{k}": digest(np.asarray(v, np.float64)) for k, v in history.items()},
            "last_val": digest(np.float64(result.last_val)),
        },
        "info": {  # also pinned, but not asked to stay: the sample and the carried state
            "samples_sha256": hashlib.sha256("\x00".join(samples).encode()).hexdigest(),
            "hidden": digest(trainer.hidden),
        },
    }


RUNNERS = {"loss_and_grad": run_loss_and_grad, "optim": run_optim, "train": run_train}


def run_case(kind: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """One case's result, computed :data:`REPEATS` times; raises if the bits vary."""
    with pinned_env():
        results = [RUNNERS[kind](recipe) for _ in range(REPEATS)]
    for other in results[1:]:
        if other["digests"] != results[0]["digests"]:
            raise AssertionError(f"{kind} {recipe}: the bits vary from call to call")
    return results[0]


def compute_pins(only: str | None = None, *, keep_going: bool = False) -> dict[str, Any]:
    """Every case (``only``: those whose names match this regular expression);
    ``keep_going``: a case that raises is recorded as ``{"error": ...}``."""
    import bptt

    cases: dict[str, Any] = {}
    for name, (kind, recipe) in recipes().items():
        if only is None or re.search(only, name):
            print(name, file=sys.stderr, flush=True)
            try:
                cases[name] = {"kind": kind, "recipe": recipe, **run_case(kind, recipe)}
            except Exception as e:
                if not keep_going:
                    raise
                cases[name] = {"kind": kind, "recipe": recipe, "error": f"{type(e).__name__}: {e}"}
    return {
        "format": FORMAT,
        "produced_by": "tests/pins/make_pins.py",
        "source": {"version": bptt.__version__, **source_of(bptt)},
        "environment": environment(),
        "cases": cases,
    }


def compare(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Every digest of ``expected`` that ``got`` lacks or differs in, as lines."""
    lines = []
    for name, case in expected["cases"].items():
        mine = got["cases"].get(name)
        if mine is None:
            continue
        if "error" in mine:
            lines.append(f"{name}: raised {mine['error']}")
            continue
        for key, value in case["digests"].items():
            if mine["digests"].get(key) != value:
                lines.append(f"{name}: {key} differs")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the pins here (default: stdout)")
    ap.add_argument("--tree", help="import bptt from this source tree")
    ap.add_argument("--check", metavar="JSON", help="compare with these pins instead")
    ap.add_argument("--only", help="a regular expression: the cases whose names match")
    args = ap.parse_args(argv)
    if args.tree:
        use_tree(args.tree)
    import bptt

    print(f"bptt from {bptt.__file__}", file=sys.stderr)
    got = compute_pins(args.only, keep_going=bool(args.check))
    if args.check:
        expected = json.loads(Path(args.check).read_text())
        differ = comparable(expected["environment"], got["environment"])
        lines = compare(expected, got)
        print("\n".join(lines) or f"all {len(got['cases'])} cases match")
        if lines and differ:
            print(f"(the environment differs: {differ}; the bits may differ for that alone)")
            return 2
        return 1 if lines else 0
    text = json.dumps(got, indent=1, sort_keys=False) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
