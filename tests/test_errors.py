"""Bad input at the API boundary: one clear exception each, raised before any work."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bptt
from bptt import backends

M, D, C, T, B = 5, 4, 3, 6, 2


def good() -> dict:
    rng = np.random.default_rng(0)
    return dict(
        params=bptt.init_params(M, D, C, dtype="float64"),
        inputs=rng.integers(0, M, (T, B)),
        targets=rng.integers(0, C, (T, B)),
        kwargs={},
    )


def _with(**change):
    def make() -> dict:
        case = good()
        for key, value in change.items():
            if key.startswith("p_"):
                case["params"][key[2:]] = value
            elif key in ("inputs", "targets"):
                case[key] = value
            else:
                case["kwargs"][key] = value
        return case

    return make


def _drop(key: str):
    def make() -> dict:
        case = good()
        del case["params"][key]
        return case

    return make


f64 = np.float64
BAD = {
    "missing V": (_drop("V"), ValueError, "params: missing key(s) ['V']"),
    "unknown key": (_with(p_Q=np.zeros(2)), ValueError, "unknown key(s) ['Q']"),
    "W wrong shape": (
        _with(p_W=np.zeros((D, D + 1))),
        ValueError,
        "params['W']: expected shape (4, 4) for cell tanh, 1 layer(s), 1 direction(s), M 5",
    ),
    "V wrong D": (
        _with(p_V=np.zeros((C, D + 1))),
        ValueError,
        "params['V']: expected shape (3, 4) for cell tanh, 1 layer(s), 1 direction(s), M 5",
    ),
    "b wrong shape": (_with(p_b=np.zeros(D + 1)), ValueError, "params['b']: expected shape (4,)"),
    "U is a vector": (_with(p_U=np.zeros(D)), ValueError, "params['U']: expected a matrix"),
    "integer params": (
        _with(p_U=np.zeros((D, M), dtype=np.int64)),
        TypeError,
        "expected a floating dtype",
    ),
    "mixed dtypes": (
        _with(p_W=np.zeros((D, D), dtype=np.float32)),
        TypeError,
        "params['W']: dtype float32 differs",
    ),
    "params not a mapping": (
        lambda: {**good(), "params": [1, 2]},
        TypeError,
        "params: expected a mapping",
    ),
    "inputs a list": (_with(inputs=[[1, 2]]), TypeError, "inputs: expected an array"),
    "inputs 1-D": (
        _with(inputs=np.zeros(T, dtype=np.int64)),
        ValueError,
        "inputs: expected token ids",
    ),
    "ids too large": (
        _with(inputs=np.full((T, B), 70)),
        ValueError,
        "inputs: token ids must lie in [0, 5); got min 70, max 70",
    ),
    "negative ids": (_with(inputs=np.full((T, B), -1)), ValueError, "token ids must lie in [0, 5)"),
    "float ids": (_with(inputs=np.zeros((T, B))), TypeError, "token ids and need an integer dtype"),
    "integer dense": (
        _with(inputs=np.zeros((T, B, M), dtype=np.int64)),
        TypeError,
        "dense inputs need a floating dtype",
    ),
    "dense wrong M": (_with(inputs=np.zeros((T, B, M + 1))), ValueError, "with M = 5"),
    "dense float32 vs float64": (
        _with(inputs=np.zeros((T, B, M), dtype=np.float32)),
        TypeError,
        "inputs: dtype float32 differs",
    ),
    "NaN dense": (_with(inputs=np.full((T, B, M), np.nan)), ValueError, "inputs: contains NaN"),
    "NaN params": (_with(p_W=np.full((D, D), np.nan)), ValueError, "params['W']: contains NaN"),
    "inf h0": (_with(h0=np.full((B, D), np.inf)), ValueError, "h0: contains NaN or infinite"),
    "empty T": (
        lambda: {
            **good(),
            "inputs": np.zeros((0, B), dtype=np.int64),
            "targets": np.zeros((0, B), dtype=np.int64),
        },
        ValueError,
        "T and B must be at least 1",
    ),
    "empty B": (
        lambda: {
            **good(),
            "inputs": np.zeros((T, 0), dtype=np.int64),
            "targets": np.zeros((T, 0), dtype=np.int64),
        },
        ValueError,
        "T and B must be at least 1",
    ),
    "targets wrong shape": (
        _with(targets=np.zeros((T, B + 1), dtype=np.int64)),
        ValueError,
        "targets: expected shape (T, B)",
    ),
    "targets out of range": (
        _with(targets=np.full((T, B), 3)),
        ValueError,
        "targets: class ids must lie in [0, 3); got min 3, max 3",
    ),
    "float softmax targets": (_with(targets=np.zeros((T, B))), TypeError, "need an integer dtype"),
    "sigmoid targets shape": (
        _with(head="sigmoid", targets=np.zeros((T, B))),
        ValueError,
        "(T, B, C) = (6, 2, 3) 0/1 labels",
    ),
    "sigmoid targets range": (
        _with(head="sigmoid", targets=np.full((T, B, C), 2.0)),
        ValueError,
        "sigmoid targets must lie in [0, 1]",
    ),
    "h0 wrong shape": (
        _with(h0=np.zeros((B, D + 1))),
        ValueError,
        "h0: expected shape (B, D) = (2, 4)",
    ),
    "h0 wrong dtype": (
        _with(h0=np.zeros((B, D), dtype=np.float32)),
        TypeError,
        "h0: dtype float32 differs",
    ),
    "mask wrong shape": (
        _with(mask=np.ones((T + 1, B), dtype=bool)),
        ValueError,
        "mask: expected shape (T, B)",
    ),
    "mask all masked": (
        _with(mask=np.zeros((T, B), dtype=bool)),
        ValueError,
        "every step is masked",
    ),
    "mask not 0/1": (_with(mask=np.full((T, B), 2)), ValueError, "must hold only 0 and 1"),
    "dropout wrong shape": (
        _with(dropout_mask=np.ones((T, B, D + 1))),
        ValueError,
        "dropout_mask: expected shape",
    ),
    "unknown head": (
        _with(head="tanh"),
        ValueError,
        "head: expected one of ['softmax', 'sigmoid', 'mse']; got 'tanh'",
    ),
    "unknown reduction": (
        _with(reduction="max"),
        ValueError,
        "reduction: expected one of ['mean', 'sum']",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_refused_clearly(name: str) -> None:
    make, error, fragment = BAD[name]
    case = make()
    with pytest.raises(error) as info:
        bptt.loss_and_grad(case["params"], case["inputs"], case["targets"], **case["kwargs"])
    assert fragment in str(info.value)


def test_refused_on_the_gpu_stand_in_too() -> None:
    """Value checks work on a device that refuses implicit NumPy conversion."""
    be = backends.get_backend("array_api_strict", "device1")
    params = bptt.init_params(M, D, C, backend=be.name, device=be.device)
    inputs = be.asarray(np.full((T, B), 9))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 5\); got min 9, max 9"):
        bptt.forward(params, inputs)


@pytest.mark.parametrize(
    "call, error, fragment",
    [
        (lambda: bptt.init_params(0, 4, 3), ValueError, "input_size: expected a positive integer"),
        (lambda: bptt.init_params(5, 4.0, 3), ValueError, "hidden_size"),
        (lambda: bptt.init_params(5, 4, 3, dtype="float16"), ValueError, "dtype: expected one of"),
        (lambda: bptt.init_params(5, 4, 3, init="he"), ValueError, "init: expected one of"),
        (
            lambda: bptt.init_params(5, 4, 3, backend="mxnet"),
            backends.BackendError,
            "backend: expected",
        ),
    ],
)
def test_bad_init_params(call, error, fragment: str) -> None:
    with pytest.raises(error, match=None) as info:
        call()
    assert fragment in str(info.value)


DOCUMENTED = (ValueError, TypeError)


@settings(max_examples=60, deadline=None)
@given(
    in_shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    tg_shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    in_dtype=st.sampled_from(["int64", "int32", "float64", "float32", "bool"]),
    tg_dtype=st.sampled_from(["int64", "float64", "bool"]),
    head=st.sampled_from(["softmax", "sigmoid"]),
    seed=st.integers(0, 1000),
)
def test_random_arguments_succeed_or_raise_documented_errors(
    in_shape, tg_shape, in_dtype, tg_dtype, head, seed
) -> None:
    rng = np.random.default_rng(seed)
    params = bptt.init_params(3, 2, 2, dtype="float64")
    inputs = rng.integers(-1, 4, in_shape).astype(in_dtype)
    targets = rng.integers(-1, 3, tg_shape).astype(tg_dtype)
    try:
        loss, grads, _ = bptt.loss_and_grad(params, inputs, targets, head=head)
    except DOCUMENTED as e:
        assert ":" in str(e)  # names the argument
        return
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
