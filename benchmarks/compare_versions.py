"""Two versions of bptt timed side by side: ``loss_and_grad`` and one training update.

Each source tree runs in its own long-lived worker process (its own interpreter,
``--python-old``/``--python-new``, and bptt imported from that tree ahead of any
installed one). The parent asks the workers in turn for timed blocks, A B A B ...,
pausing before each block; a worker makes one untimed call before each block. A
block is as many calls as fill about ``--block`` seconds (counted once per case).
Reported: the median time per call over ``--reps`` blocks for each tree, and the
ratio new/old: the median of the paired ratios (block i of each) and their range.

Timed (NumPy, token ids, softmax head, mean): ``loss_and_grad(params, x, y,
check_values=False)``, and one update: loss_and_grad, clip_by_global_norm(5), Adam
(where the tree has it, the training step ``bptt train`` runs, over one flat vector:
``bptt.train.make_train_step``).

Run: ``python benchmarks/compare_versions.py [--old PATH] [--new PATH] [--sizes S1,S2]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZES = {  # B, T, D, M = C
    "S0": (1, 2, 8, 8),  # the per-call overhead: almost no arithmetic
    "S1": (32, 25, 100, 65),
    "S2": (64, 100, 256, 128),
    "S3": (128, 200, 512, 128),
}
WHAT = ("loss_and_grad", "update")


def use_tree(tree: Path) -> None:
    """Import ``bptt`` from the source tree ``tree``, whose ``backends/`` folder the package
    config maps to ``bptt.backends``, ahead of any installed bptt."""

    def spec(name: str, folder: Path) -> Any:
        init = folder / "__init__.py"
        return importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[str(folder)]
        )

    class TreeFinder:
        @staticmethod
        def find_spec(name: str, path: Any = None, target: Any = None) -> Any:
            if name == "bptt":
                return spec(name, tree / "bptt")
            if name == "bptt.backends" and not (tree / "bptt" / "backends").is_dir():
                return spec(name, tree / "backends")
            return None

    sys.meta_path.insert(0, TreeFinder)


def training_update(bptt: Any) -> tuple[Any, Any]:
    """``(init, update)``: clip at global norm 5, then Adam, in the tree's optimizer API.

    New (optax-style): ``chain(clip_by_global_norm(5), adam)``, ``update(grads, state,
    params)`` and ``apply_updates``; old: ``clip_by_global_norm(grads, 5)`` returning
    ``(grads, norm)`` and ``update(params, grads, state)``.
    """
    optim = bptt.optim
    if hasattr(optim, "apply_updates"):
        opt = optim.chain(optim.clip_by_global_norm(5.0), optim.adam(2e-3))

        def update(params: Any, state: Any, x: Any, y: Any) -> tuple[Any, Any]:
            _, grads, _ = bptt.loss_and_grad(params, x, y, check_values=False)
            updates, state = opt.update(grads, state, params)
            return optim.apply_updates(params, updates), state

        return opt.init, update
    opt = optim.adam(2e-3)

    def old_update(params: Any, state: Any, x: Any, y: Any) -> tuple[Any, Any]:
        _, grads, _ = bptt.loss_and_grad(params, x, y, check_values=False)
        return opt.update(params, optim.clip_by_global_norm(grads, 5.0)[0], state)

    return opt.init, old_update


def build(bptt: Any, size: str, dtype: str, what: str) -> Any:
    """A call of no arguments that does the work once, on fixed inputs."""
    import numpy as np

    B, T, D, M = SIZES[size]
    params = bptt.init_params(M, D, M, dtype=dtype, seed=0, backend="numpy")
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, M, size=(T, B), dtype=np.int64) for _ in range(2))
    if what == "loss_and_grad":
        return lambda: bptt.loss_and_grad(params, x, y, check_values=False)
    try:  # a package of the tree, imported on request (bptt's __init__ does not)
        train = importlib.import_module("bptt.train")
    except ImportError:
        train = None
    if hasattr(train, "make_train_step"):  # the step `bptt train` runs: flat parameters
        return _flat_train_step(bptt, params, x, y)
    init, update = training_update(bptt)
    state = init(params)
    return lambda: update(params, state, x, y)


def _flat_train_step(bptt: Any, params: Any, x: Any, y: Any) -> Any:
    """The training step over one flat parameter vector (clip 5, Adam 2e-3), as
    ``bptt train`` runs it: :func:`bptt.train.make_train_step`."""
    import numpy as np

    from bptt.math.flat import Layout
    from bptt.train import TrainCarry, TrainConfig, make_train_step

    B, D = x.shape[1], params["W"].shape[0]
    opt = TrainConfig(hidden=D, batch=B, seq_len=x.shape[0], clip=5.0, lr=2e-3).make_optimizer()
    layout = Layout.of(params)
    flat = layout.flatten(params, np)
    carry = TrainCarry(flat, opt.init(flat), None, np.zeros((), np.int64))
    if hasattr(bptt, "RNN"):  # the model value: the step takes it
        step = make_train_step(opt, layout, model=bptt.RNN.from_params(params))
    else:
        step = make_train_step(opt, layout)
    return lambda: step(carry, x, y)


def worker(tree: str, block: float) -> None:
    """Answer one JSON line per request line: seconds per call over one timed block."""
    use_tree(Path(tree).resolve())
    import numpy as np

    import bptt

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", tree, *args], capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip()
    commit += " + uncommitted changes" if commit and git("status", "--porcelain").strip() else ""
    hello = {"bptt": bptt.__file__, "numpy": np.__version__, "commit": commit}
    print(json.dumps(hello), flush=True)
    cases: dict[tuple[str, str, str], tuple[Any, int]] = {}
    for line in sys.stdin:
        key = tuple(json.loads(line))
        if key not in cases:
            fn = build(bptt, *key)
            fn()
            t0 = time.perf_counter()
            fn()
            cases[key] = fn, max(1, round(block / (time.perf_counter() - t0)))
        fn, calls = cases[key]
        fn()  # untimed
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        print(json.dumps((time.perf_counter() - t0) / calls), flush=True)


class Worker:
    def __init__(self, python: str, tree: str, block: float) -> None:
        args = [python, __file__, "--worker", tree, "--block", str(block)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()
        if not Path(self.hello["bptt"]).resolve().is_relative_to(Path(tree).resolve()):
            raise SystemExit(f"{tree}: the worker imported bptt from {self.hello['bptt']}")

    def _read(self) -> Any:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.proc.args} died")
        return json.loads(line)

    def block(self, key: tuple[str, str, str]) -> float:
        self.proc.stdin.write(json.dumps(key) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default="/work/old", help="source tree A (default /work/old)")
    ap.add_argument("--new", default=str(here), help="source tree B (default: this checkout)")
    ap.add_argument("--python-old", default=sys.executable, help="interpreter for --old")
    ap.add_argument("--python-new", default=sys.executable, help="interpreter for --new")
    ap.add_argument("--sizes", default="S1,S2,S3", help=f"of {','.join(SIZES)}")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--reps", type=int, default=7, help="timed blocks per tree and case")
    ap.add_argument("--block", type=float, default=0.5, help="seconds a block aims at")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds before each block")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.block)
        return 0
    sizes, dtypes = args.sizes.split(","), args.dtypes.split(",")
    if bad := [s for s in sizes if s not in SIZES]:
        ap.error(f"--sizes: unknown {bad}; expected some of {list(SIZES)}")
    old = Worker(args.python_old, args.old, args.block)
    new = Worker(args.python_new, args.new, args.block)
    for name, w, tree in (("old", old, args.old), ("new", new, args.new)):
        print(f"- {name}: {tree} ({w.hello['commit'] or 'no git'}), numpy {w.hello['numpy']}")
    print("\n| size | dtype | timed | old ms | new ms | new/old | range |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- |")
    try:
        for size in sizes:
            for dtype in dtypes:
                for what in WHAT:
                    times: dict[str, list[float]] = {"old": [], "new": []}
                    for _ in range(args.reps):
                        for name, w in (("old", old), ("new", new)):
                            time.sleep(args.pause)
                            times[name].append(w.block((size, dtype, what)))
                    ratios = [b / a for a, b in zip(times["old"], times["new"], strict=True)]
                    a, b = (1e3 * statistics.median(times[k]) for k in ("old", "new"))
                    print(
                        f"| {size} | {dtype} | {what} | {a:.2f} | {b:.2f} | "
                        f"{statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} |",
                        flush=True,
                    )
    finally:
        old.close()
        new.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
