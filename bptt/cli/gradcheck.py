"""``bptt gradcheck``: BPTT gradients against finite differences on a chosen backend."""

from __future__ import annotations

import argparse

from ._args import add_backend_arguments, nonneg_int, positive_float, positive_int

HELP = "check BPTT gradients against finite differences; prints the worst relative error"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backend_arguments(parser, default="numpy")
    parser.add_argument("--inputs", type=positive_int, default=5, help="M (default 5)")
    parser.add_argument("--hidden", type=positive_int, default=8, help="D (default 8)")
    parser.add_argument("--outputs", type=positive_int, default=4, help="C (default 4)")
    parser.add_argument("--seq-len", type=positive_int, default=6, help="T (default 6)")
    parser.add_argument("--batch", type=positive_int, default=3, help="B (default 3)")
    parser.add_argument("--head", choices=("softmax", "sigmoid", "mse"), default="softmax")
    parser.add_argument("--layers", type=positive_int, default=1, help="L (default 1)")
    parser.add_argument("--bidirectional", action="store_true", help="two directions per layer")
    parser.add_argument(
        "--cell", "--nonlinearity", dest="cell", choices=("tanh", "relu", "gru", "lstm"),
        default="tanh", help="the recurrent cell (default tanh)",
    )  # fmt: skip
    parser.add_argument("--dense", action="store_true", help="dense (T, B, M) inputs, not ids")
    parser.add_argument("--h0", action="store_true", help="start from a random state")
    parser.add_argument("--max-entries", type=positive_int, help="random entries per parameter")
    parser.add_argument(
        "--eps", type=positive_float,
        help="finite-difference step (default 1e-3; 1e-5 with relu, whose kink at 0 a step "
        "of 1e-3 often crosses)",
    )  # fmt: skip
    parser.add_argument("--seed", type=nonneg_int, default=0)
    parser.add_argument(
        "--tol", type=positive_float, default=1e-6, help="fail above this (default 1e-6)"
    )


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import backends
    from ..api.rnn import RNN

    parser = args._parser
    try:
        be = backends.get_backend(args.backend, args.device)
    except backends.BackendError as e:
        parser.error(str(e))
    if not be.supports("float64"):
        x64 = " (JAX: set JAX_ENABLE_X64=1)" if be.name == "jax" else ""
        parser.error(f"gradcheck needs float64, which {be.name} device {be.device!r} lacks{x64}")
    M, D, C, T, B = args.inputs, args.hidden, args.outputs, args.seq_len, args.batch
    rng = np.random.default_rng(args.seed)
    model = RNN(
        M, D, C, cell=args.cell, layers=args.layers, bidirectional=args.bidirectional,
        head=args.head,
    )  # fmt: skip
    params = model.init(seed=args.seed, dtype="float64", backend=be.name, device=be.device)
    for key in [k for k in params if k[0] in "bc"]:  # nonzero biases: their gradients checked
        params[key] = be.asarray(rng.uniform(-0.5, 0.5, params[key].shape), dtype="float64")
    if args.dense:
        inputs = be.asarray(rng.standard_normal((T, B, M)), dtype="float64")  # (T, B, M)
    else:
        inputs = be.asarray(rng.integers(0, M, (T, B)))  # (T, B)
    if args.head == "softmax":
        targets = be.asarray(rng.integers(0, C, (T, B)))  # (T, B)
    elif args.head == "sigmoid":
        targets = be.asarray((rng.random((T, B, C)) < 0.5).astype(np.float64), dtype="float64")
    else:
        targets = be.asarray(rng.standard_normal((T, B, C)), dtype="float64")  # (T, B, C)
    h0 = None
    if args.h0:  # one array, or LSTM's (h0, c0)
        parts = [be.asarray(rng.uniform(-0.9, 0.9, model.state_shape(B)), dtype="float64")
                 for _ in range(model.state_parts)]  # fmt: skip
        h0 = parts[0] if model.state_parts == 1 else tuple(parts)
    err = model.gradcheck(
        params,
        inputs,
        targets,
        h0=h0,
        max_entries=args.max_entries,
        seed=args.seed,
        eps=args.eps if args.eps is not None else (1e-5 if args.cell == "relu" else 1e-3),
    )
    ok = err <= args.tol
    arch = f"L={args.layers}{' bidirectional' if args.bidirectional else ''} {args.cell}, "
    print(
        f"gradcheck on {be.name} ({be.device}), M={M} D={D} C={C} T={T} B={B}, {arch}"
        f"{args.head} head: "
        f"worst relative error {err:.3e} ({'ok' if ok else 'FAILED'}, tolerance {args.tol:g})"
    )
    return 0 if ok else 1
