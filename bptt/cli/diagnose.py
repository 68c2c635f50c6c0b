"""``bptt diagnose``: gradient flow through time for a checkpoint or a fresh model.

    bptt diagnose CHECKPOINT --plot flow.png
    bptt diagnose --init --hidden 64 --spectral-radius 0.5 1 2 --plot flow.png

Runs :func:`bptt.evaluation.diagnostics.gradient_flow` (softmax head, mean reduction) on
one batch and prints the mean of ||dL_t/ds_k|| by lag t - k (for a stack of
layers: the states and W of the last layer). For a checkpoint
the batch is B windows of held-out text (next-character targets): ``--text``, or
the built-in corpus the checkpoint was trained on; for a file-trained checkpoint
without ``--text``, and for ``--init``, random token ids and targets. ``--plot``
draws the lag curve on a log scale and the t-by-k heat map, one heat map per
spectral radius (:func:`bptt.host.plot.plot_gradient_flow`). matplotlib is imported only
when plotting (``pip install 'bptt[plot]'``).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from ._args import (
    FIGURE_SUFFIXES,
    add_backend_arguments,
    check_output_path,
    nonneg_int,
    positive_float,
    positive_int,
    size,
)

HELP = "gradient flow through time: ||dL_t/ds_k|| by lag, for a checkpoint or a fresh model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", help="checkpoint file or directory to diagnose")
    parser.add_argument("--init", action="store_true", help="diagnose a freshly initialised model")
    parser.add_argument("--hidden", type=positive_int, default=64, help="D for --init (default 64)")
    parser.add_argument(
        "--layers", type=positive_int, default=1, help="L for --init (default 1): the last is shown"
    )
    parser.add_argument(
        "--cell", "--nonlinearity", dest="cell", choices=("tanh", "relu", "gru", "lstm"),
        default="tanh", help="the cell for --init (default tanh)",
    )  # fmt: skip
    parser.add_argument(
        "--vocab", type=positive_int, default=32, help="M = C for --init (default 32)"
    )
    parser.add_argument(
        "--scheme", choices=("uniform", "xavier", "orthogonal"), default="uniform",
        help="initialisation of a fresh model (default uniform)",
    )  # fmt: skip
    parser.add_argument(
        "--spectral-radius", type=positive_float, nargs="+", metavar="R",
        help="rescale W to spectral radius R before measuring; several values compare them",
    )  # fmt: skip
    parser.add_argument(
        "--text", metavar="FILE",
        help="for a checkpoint: draw the batch from this text (default: the checkpoint's own "
        "built-in corpus if it has one, else random token ids)",
    )  # fmt: skip
    parser.add_argument("--seq-len", type=positive_int, default=50, help="T (default 50)")
    parser.add_argument("--batch", type=positive_int, default=32, help="B (default 32)")
    parser.add_argument(
        "--seed", type=nonneg_int, default=0, help="seed of the model and the batch"
    )
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument(
        "--max-text-size", type=size, metavar="SIZE", default=1 << 30,
        help="refuse a --text larger than this (default 1G)",
    )  # fmt: skip
    add_backend_arguments(parser, default="numpy")
    parser.add_argument("--plot", metavar="FILE.png", help="write the figure to this file")


def _fresh_params(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from ..api.rnn import RNN

    model = RNN(args.vocab, args.hidden, args.vocab, cell=args.cell, layers=args.layers,
                initializer=args.scheme)  # fmt: skip
    return {k: np.asarray(v) for k, v in model.init(seed=args.seed, dtype="float64").items()}


def _text_ids(ckpt: Any, args: argparse.Namespace) -> tuple[Any, str] | None:
    """Held-out ids of the text the checkpoint was trained on, or of ``--text``; None if none."""
    from ..text import data

    source = ckpt.config.get("data", {}).get("source", "") if ckpt.config else ""
    vocab = data.Vocab(ckpt.vocab)
    if args.text is not None:
        ids = data.encode_file(args.text, vocab, max_bytes=args.max_text_size)
        name = args.text
    elif source.startswith("corpus:") and source[len("corpus:") :] in data.CORPORA:
        name = source
        ids = vocab.encode(data.builtin_text(source[len("corpus:") :]), name=name)
    else:
        return None
    _, held_out = data.split_ids(ids)
    return held_out, f"held-out text of {name}"


def _batch(host: dict[str, Any], ids: Any, args: argparse.Namespace, be: Any) -> tuple[Any, Any]:
    """(T, B) inputs and targets: windows of ``ids`` (next-character targets), else random."""
    import numpy as np

    M = host["U"].shape[1]
    C = host["V"].shape[0]
    rng = np.random.default_rng(args.seed + 1)
    T, B = args.seq_len, args.batch
    if ids is not None and len(ids) > T + 1:
        starts = rng.integers(0, len(ids) - T - 1, B)
        windows = np.stack([ids[i : i + T + 1] for i in starts], axis=1)  # (T+1, B)
        return be.asarray(windows[:-1]), be.asarray(windows[1:])
    return be.asarray(rng.integers(0, M, (T, B))), be.asarray(rng.integers(0, C, (T, B)))


def measure(host: dict[str, Any], radius: float | None, ids: Any, args: argparse.Namespace,
            cell: str = "tanh") -> dict:  # fmt: skip
    """gradient_flow (softmax head) for host params, the last layer's W rescaled to
    ``radius`` if given, as NumPy."""
    from .. import backends
    from ..api.rnn import RNN
    from ..evaluation.diagnostics import gradient_flow, spectral_stats
    from ..math.layers import arch_of, suffix

    host = dict(host)
    w = f"W{suffix(arch_of(host).layers - 1, 0)}"  # the last layer's W: what is measured
    if radius is not None:
        if host[w].shape[0] != host[w].shape[1]:
            raise ValueError(
                f"--spectral-radius: a {cell} cell's W stacks its gates ({host[w].shape}) "
                "and has no spectral radius to set; leave it out"
            )
        current, _ = spectral_stats(host[w])
        host[w] = host[w] * (radius / current)
    be = backends.get_backend(args.backend, args.device)
    params = {k: be.asarray(v.astype(args.dtype), dtype=args.dtype) for k, v in host.items()}
    inputs, targets = _batch(host, ids, args, be)
    flow = gradient_flow(RNN.from_params(params, cell=cell), params, inputs, targets)
    gated = host[w].shape[0] != host[w].shape[1]
    label = f"sigma_max(W) = {flow.max_singular_value:.3g}" if gated else (
        f"rho(W) = {flow.spectral_radius:.3g}")  # fmt: skip
    return {
        "norms": be.to_numpy(flow.norms),
        "lag_mean": be.to_numpy(flow.lag_mean),
        "cell_lag_mean": None if flow.cell_norms is None else be.to_numpy(flow.cell_lag_mean),
        "radius": flow.spectral_radius,
        "sigma": flow.max_singular_value,
        "gated": gated,
        "label": label,
        "shape": (args.seq_len, args.batch, host[w].shape[1]),
    }


def _require_memory(host: dict[str, Any], args: argparse.Namespace) -> None:
    """TooLargeError unless one measurement fits: the (T, T) norms (twice: the columns
    and their stack) and four (T, B, D) and two (T, B, C) arrays of the sweep."""
    from .. import backends
    from ..host.limits import require_memory

    T, B = args.seq_len, args.batch
    D, C = host["W"].shape[0], host["V"].shape[0]
    itemsize = 8 if args.dtype == "float64" else 4
    need = itemsize * (2 * T * T + 4 * T * B * D + 2 * T * B * C)
    require_memory(need, f"--seq-len {T} (the T x T norms, with --batch {B} and D = {D})",
                   backend=backends.get_backend(args.backend, args.device),
                   fix="use a smaller --seq-len or --batch")  # fmt: skip


def _require_finite(result: dict, radius: float | None, args: argparse.Namespace) -> None:
    """FloatingPointError naming the setting when a gradient norm overflowed: a norm
    that is NaN or infinite is never printed as a measurement."""
    import numpy as np

    bad = np.flatnonzero(~np.isfinite(result["lag_mean"]))
    radius_ok = result["gated"] or math.isfinite(result["radius"])  # gated: no radius
    if bad.size == 0 and radius_ok and math.isfinite(result["sigma"]):
        return
    setting = "the checkpoint's W" if radius is None else f"--spectral-radius {radius:g}"
    lag = f" from lag {int(bad[0])} on" if bad.size else ""
    raise FloatingPointError(
        f"{setting}: the gradient norms are NaN or infinite{lag} ({args.dtype}, --seq-len "
        f"{args.seq_len}): they overflow; use a smaller --spectral-radius or --seq-len"
        + (", or --dtype float64" if args.dtype != "float64" else "")
    )


def _summary(result: dict) -> str:
    lag = result["lag_mean"]
    shown = [lag_ for lag_ in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500) if lag_ < len(lag)]
    cell = result["cell_lag_mean"]  # LSTM: the flow through the cell state
    head = result["label"] if result["gated"] else f"{result['label']}, sigma_max(W) = " \
        f"{result['sigma']:.3g}"  # fmt: skip
    lines = [head, "  lag   mean ||dL_t/ds_k||   / lag 0"]
    if cell is not None:
        lines[-1] += "   cell state ||dL_t/dc_k||   / lag 0"
    for lag_ in shown:
        line = f"  {lag_:>3}   {lag[lag_]:>18.3e}   {_ratio(lag, lag_)}"
        if cell is not None:
            line += f"   {cell[lag_]:>24.3e}   {_ratio(cell, lag_)}"
        lines.append(line)
    return "\n".join(lines)


def _ratio(values: Any, lag: int) -> str:
    return f"{values[lag] / values[0]:>8.2e}" if values[0] > 0 else f"{'-':>8}"  # no 0 / 0


def run(args: argparse.Namespace) -> int:
    from .. import backends
    from ..text.data import DataError
    from ..train.checkpoint import CheckpointError

    try:
        be = backends.get_backend(args.backend, args.device)
    except backends.BackendError as e:
        args._parser.error(str(e))
    try:
        be.require_dtype(args.dtype, "--dtype")
    except ValueError as e:
        args._parser.error(str(e))
    import numpy as np

    try:
        with np.errstate(all="ignore"):  # an overflow is one line, not warnings
            return _run(args)
    except (CheckpointError, DataError, ValueError) as e:
        args._parser.error(str(e))


def _run(args: argparse.Namespace) -> int:
    if args.init == (args.checkpoint is not None):
        args._parser.error("give a CHECKPOINT or --init (one of them)")
    if args.plot:
        import importlib.util

        check_output_path(args.plot, "--plot", suffixes=FIGURE_SUFFIXES)
        if importlib.util.find_spec("matplotlib") is None:
            args._parser.error("--plot needs matplotlib: pip install 'bptt[plot]'")
    ids, batch = None, "random token ids"
    if args.init:
        if args.text is not None:
            args._parser.error("--text needs a CHECKPOINT (a fresh model has no vocabulary)")
        host = _fresh_params(args)
        source = f"fresh '{args.scheme}' init, seed {args.seed}"
        layers, cell = args.layers, args.cell
    else:
        from ..train.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        host = {k: v for k, v in ckpt.params.items() if v is not None}
        source = f"{args.checkpoint} (step {ckpt.step})"
        layers, cell = ckpt.model.layers, ckpt.model.cell
        found = _text_ids(ckpt, args)
        if found is not None:
            ids, batch = found
    _require_memory(host, args)
    radii = args.spectral_radius or [None]
    results = [measure(host, radius, ids, args, cell) for radius in radii]
    for radius, result in zip(radii, results, strict=True):
        _require_finite(result, radius, args)
    T, B, D = results[0]["shape"]
    model = "" if layers == 1 else f"layer {layers} of {layers}, "
    model += "" if cell == "tanh" else f"{cell}, "
    title = f"{source}: {model}D = {D}, T = {T}, B = {B}, {batch}"
    print(title)
    for result in results:
        print(_summary(result))
    if args.plot:
        from ..host.plot import plot_gradient_flow

        try:
            plot_gradient_flow(results, args.plot, title=title)
        except OSError as e:  # its directory went away meanwhile
            raise ValueError(f"--plot: cannot write {args.plot!r}: {e.strerror or e}") from None
        print(f"wrote {args.plot}")
    return 0
