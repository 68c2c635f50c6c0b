"""Training a stacked or relu character model: exact resume, checkpoints that record the
architecture (older ones still load), validation and sampling with one state per
layer, the command line, the compiled step and the sync-free proxy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import jax_x64
from test_sync_free import ProxyBackend, pbe  # noqa: F401  (pbe: the proxy fixture)
from train_helpers import SMALL_TEXT, small_config, small_corpus, small_trainer

import bptt
from bptt import backends, cli, train
from bptt.math.flat import Layout
from bptt.text.sample import sample_ids
from bptt.text.validation import evaluate, layout_validation
from bptt.train.checkpoint import LATEST, load_checkpoint

NUMPY = backends.get_backend("numpy")
STACK = dict(layers=2, cell="relu", dropout=0.2)


def _snapshot(trainer: train.Trainer) -> dict[str, np.ndarray]:
    ckpt = trainer.checkpoint()
    out = {f"param/{k}": v for k, v in ckpt.params.items()}
    out.update({f"opt/{k}": v for k, v in ckpt.opt_state.items()})
    out["hidden"] = ckpt.hidden
    return out


def test_a_stack_resumes_exactly(tmp_path) -> None:
    """2N steps equal N steps, a checkpoint and N more, bit for bit, across an epoch
    boundary, with dropout on every layer's output."""
    options = dict(batch=16, eval_every=4, log_every=2, **STACK)
    N = 14
    straight = small_trainer(NUMPY, **options)
    straight.run(steps=2 * N)
    first = small_trainer(NUMPY, tmp_path, **options)
    first.run(steps=N)
    ckpt = load_checkpoint(tmp_path / LATEST)
    assert ckpt.architecture == {"layers": 2, "bidirectional": False, "nonlinearity": "relu"}
    M = len(small_corpus().vocab)
    assert ckpt.model == bptt.RNN(M, 12, M, cell="relu", layers=2)
    assert ckpt.config["model"]["layers"] == 2 and ckpt.hidden.shape == (2, 16, 12)
    assert sorted(ckpt.params) == sorted(["U", "W", "U_l1", "W_l1", "V", "b", "b_l1", "c"])
    resumed = train.Trainer.resume(ckpt, small_corpus())
    assert resumed.config.layers == 2 and resumed.config.cell == "relu"
    assert resumed.model == ckpt.model
    resumed.run(steps=2 * N)
    a, b = _snapshot(straight), _snapshot(resumed)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_the_step_draws_one_mask_per_layer() -> None:
    """Dropout in a stack: the masks are the (L, T, B, D) draw of bptt.numerics.random, mask l
    after layer l; the loss and gradients are those of loss_and_grad with them."""
    from bptt.numerics import random

    trainer = small_trainer(NUMPY, layers=3, dropout=0.3)
    x, y = trainer.feed.chunk(0)
    params, hidden = trainer.params, trainer.hidden
    carry, loss, _ = trainer.train_step(trainer.state.carry, x, y)
    masks = random.dropout_mask(trainer.config.seed, 0, (3, 16, 4, 12), 0.3, xp=NUMPY.xp,
                                device=NUMPY.device, dtype=np.float64)  # fmt: skip
    ref, _, h_last = bptt.loss_and_grad(params, x, y, h0=hidden, dropout_mask=masks[2],
                                        layer_masks=[masks[0], masks[1]])  # fmt: skip
    assert float(loss) == float(ref)
    np.testing.assert_array_equal(carry.hidden, h_last)


def test_validation_and_sampling_carry_every_layers_state() -> None:
    trainer = small_trainer(NUMPY, layers=2)
    trainer.run(steps=5)
    params = trainer.params
    ids = small_corpus().val[:60]
    val = layout_validation(ids, streams=1, warmup=0, backend=NUMPY, dtype="float64")
    _, logits = bptt.forward(params, ids[:-1].reshape(-1, 1))  # one pass over the text
    ref = -np.log(np.take_along_axis(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True),
                                     ids[1:].reshape(-1, 1, 1), -1)).sum() / np.log(2)  # fmt: skip
    assert evaluate(trainer.model, params, val, chunk=7) == pytest.approx(ref / 59, rel=1e-12)
    prime = np.asarray(ids[:5])
    out = sample_ids(trainer.model, params, prime, length=12, seed=3)
    # feeding the prime and the sample in one pass gives the logits sampling used
    seq = np.concatenate([prime, out[:-1]]).reshape(-1, 1)
    _, logits = bptt.forward(params, seq)
    u = np.random.default_rng(3).random(12)
    g = logits[4:, 0, :]  # after the prime's last character, then after each sampled one
    p = np.exp(g - g.max(-1, keepdims=True))
    cdf = np.cumsum(p, -1)
    picked = np.minimum((cdf < u[:, None] * cdf[:, -1:]).sum(-1), g.shape[1] - 1)
    np.testing.assert_array_equal(out, picked)


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["format1_adam_step5.npz", "format1_sgd_step5.npz"])
def test_older_checkpoints_load_as_one_tanh_layer(name) -> None:
    ckpt = load_checkpoint(DATA / name)
    assert ckpt.architecture == {"layers": 1, "bidirectional": False, "nonlinearity": "tanh"}
    assert ckpt.train.layers == 1 and ckpt.train.cell == "tanh"


def test_a_different_depth_cannot_resume(tmp_path) -> None:
    trainer = small_trainer(NUMPY, tmp_path)
    trainer.run(steps=5)
    ckpt = load_checkpoint(tmp_path / LATEST)
    ckpt.config["model"]["layers"] = 2  # a config that does not match the stored parameters
    with pytest.raises(bptt.train.checkpoint.CheckpointError, match="number of layers 1, but 2"):
        train.Trainer.resume(ckpt, small_corpus())


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return str(path)


def test_the_command_line(text, tmp_path, capsys) -> None:
    run = str(tmp_path / "run")
    small = ["--backend", "numpy", "--text", text, "--hidden", "8", "--batch", "4",
             "--seq-len", "8", "--eval-every", "5", "--no-progress"]  # fmt: skip
    args = [*small, "--steps", "5", "--layers", "2", "--cell", "relu"]
    assert cli.main(["train", *args, "--checkpoint-dir", run]) == 0
    out = capsys.readouterr().out
    assert "L=2, relu," in out
    assert load_checkpoint(run).architecture["layers"] == 2
    assert cli.main(["train", "--resume", run, "--steps", "8", "--no-progress"]) == 0
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--resume", run, "--steps", "9", "--layers", "3"])
    assert e.value.code == 2 and "--layers: cannot change when resuming" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # --nonlinearity: --cell's older name
        cli.main(["train", "--resume", run, "--steps", "9", "--nonlinearity", "tanh"])
    assert e.value.code == 2 and "--cell: cannot change when resuming" in capsys.readouterr().err
    assert cli.main(["sample", run, "--length", "20", "--prime", "if"]) == 0
    assert len(capsys.readouterr().out) >= 20
    assert cli.main(["diagnose", run, "--seq-len", "10", "--batch", "4"]) == 0
    assert "layer 2 of 2, relu" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["train", *small, "--bidirectional"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--bidirectional: a next-character model" in err
    assert "Traceback" not in err


def test_gradcheck_command_for_a_stack(capsys) -> None:
    argv = ["gradcheck", "--layers", "2", "--bidirectional", "--nonlinearity", "relu",
            "--head", "mse", "--dense", "--h0"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "L=2 bidirectional relu" in capsys.readouterr().out


def test_jit_step_of_a_stack_equals_the_numpy_step() -> None:
    """The relu derivative and the per-layer masks trace under jax.jit (no branch on
    values): the compiled stack trains as NumPy's eager one does."""
    pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    runs = {}
    with jax_x64(True):
        for name, mode in (("jax", "jit"), ("numpy", "none")):
            config = small_config(eval_every=1000, log_every=1000, seq_len=5, **STACK)
            trainer = train.Trainer.create(small_corpus(), config, backend=name, compile=mode)
            for _ in range(3):
                trainer.advance()
            runs[name] = trainer
        assert runs["jax"].train_step.mode == "jit"
        for key, value in runs["jax"].params.items():
            np.testing.assert_allclose(np.asarray(value), runs["numpy"].params[key],
                                       rtol=1e-12, atol=1e-14)  # fmt: skip


def _stack_steps(proxy: ProxyBackend, T: int, **options) -> tuple[int, int, int]:
    """Two training steps of a 2-layer relu stack on proxy arrays: (kernels, transfers,
    reads) of the second."""
    B, M, D = 3, 5, 4
    config = train.TrainConfig(hidden=D, batch=B, seq_len=T, dtype="float32", **options)
    host = bptt.init_params(M, D, M, num_layers=config.layers, dtype="float32", seed=1,
                            backend="array_api_strict", device="device1")  # fmt: skip
    from proxy import Array

    params = {k: Array(v, proxy.ns) for k, v in host.items()}
    layout = Layout.of(params)
    opt = config.make_optimizer()
    flat = layout.flatten(params, proxy.ns)
    hidden = proxy.ns.zeros((config.layers, B, D), dtype=flat.dtype, device=proxy.device)
    counter = proxy.ns.zeros((), dtype=proxy.integer, device=proxy.device)
    carry = train.TrainCarry(flat, opt.init(flat), hidden, counter)
    step = train.make_train_step(opt, layout, dropout=config.dropout,
                                 model=config.model(M))  # fmt: skip
    rng = np.random.default_rng(0)
    x, y = proxy.asarray(rng.integers(0, M, (T, B))), proxy.asarray(rng.integers(0, M, (T, B)))
    for _ in range(2):
        proxy.ns.clear()
        proxy.reads = 0
        carry, _, _ = step(carry, x, y)
    return proxy.ns.kernels(), proxy.ns.transfers, proxy.reads


def test_a_stacked_step_never_syncs_and_costs_6_kernels_per_cell_and_step(pbe) -> None:  # noqa: F811
    counts = {T: _stack_steps(pbe, T, **STACK) for T in (3, 5)}
    assert all(transfers == 0 and reads == 0 for _, transfers, reads in counts.values())
    per_step = (counts[5][0] - counts[3][0]) / 2
    assert per_step == 6 * 2  # 3 forward + 3 backward per layer and time step
    three = _stack_steps(pbe, 5, layers=3, cell="relu", dropout=0.2)
    assert three[1] == three[2] == 0


def test_the_layer_masks_of_a_vjp_on_device1_never_sync(pbe) -> None:  # noqa: F811
    """The public vjp on the proxy: forward and pullback, no host read with the value
    checks off, no host data moved."""
    from proxy import Array

    host = bptt.init_params(3, 4, 2, num_layers=2, bidirectional=True, dtype="float64",
                            backend="array_api_strict", device="device1")  # fmt: skip
    params = {k: Array(v, pbe.ns) for k, v in host.items()}
    rng = np.random.default_rng(0)
    x = pbe.asarray(rng.standard_normal((4, 2, 3)))
    masks = [pbe.asarray(np.ones((4, 2, 8)))]
    dl = pbe.asarray(rng.standard_normal((4, 2, 2)))
    pbe.ns.clear()
    _, pullback = bptt.vjp(params, x, nonlinearity="relu", layer_masks=masks,
                             check_values=False)  # fmt: skip
    cot = pullback(dl, with_inputs=True, with_h0=True)
    assert isinstance(cot.inputs, Array) and pbe.ns.transfers == 0 and pbe.reads == 0


def test_vjp_traces_under_jax_jit() -> None:
    """The forward pass and the pullback of a relu stack, values unchecked, compile as
    one function (no host read, no branch on values) and equal NumPy's."""
    jax = pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    with jax_x64(True):
        import jax.numpy as jnp

        host = bptt.init_params(3, 4, 2, num_layers=2, bidirectional=True, dtype="float64")
        rng = np.random.default_rng(0)
        x, h0 = rng.standard_normal((5, 2, 3)), rng.uniform(-0.5, 0.5, (4, 2, 4))
        dl = rng.standard_normal((5, 2, 2))

        def grads(params, x, h0, dl):
            _, pullback = bptt.vjp(params, x, h0=h0, nonlinearity="relu", check_values=False)
            return pullback(dl, with_inputs=True, with_h0=True)

        cot = jax.jit(grads)({k: jnp.asarray(v) for k, v in host.items()}, jnp.asarray(x),
                             jnp.asarray(h0), jnp.asarray(dl))  # fmt: skip
        ref = grads(host, x, h0, dl)
        for key in host:
            np.testing.assert_allclose(np.asarray(cot.params[key]), ref.params[key], rtol=1e-12,
                                       atol=1e-15)  # fmt: skip
        np.testing.assert_allclose(np.asarray(cot.inputs), ref.inputs, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(np.asarray(cot.h0), ref.h0, rtol=1e-12, atol=1e-15)
