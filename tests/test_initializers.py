"""The recurrent initialisations of the model value: identity (IRNN, Le et al. 2015),
orthogonal, scaled, chosen by name and recorded in a model's config."""

from __future__ import annotations

import numpy as np
import pytest

import bptt
from bptt.api.params import INITS
from bptt.train import TrainConfig


@pytest.mark.parametrize("layers", [1, 2])
def test_identity_is_scaled_eye_and_small_elsewhere(layers: int) -> None:
    model = bptt.RNN(2, 40, 1, cell="relu", layers=layers, head="mse", initializer="identity",
                     init_scale=0.5)  # fmt: skip
    params = model.init(seed=3, dtype="float64")
    for key, value in params.items():
        if key.startswith("W"):
            assert np.array_equal(value, 0.5 * np.eye(40)), key
        elif value.ndim == 1:
            assert not value.any(), key  # biases 0
        else:
            assert 0 < value.std() < 2e-3 and abs(value.mean()) < 1e-3, key  # N(0, 0.001^2)


def test_orthogonal_is_scaled_per_gate_block() -> None:
    model = bptt.RNN(3, 16, 3, initializer="orthogonal", init_scale=0.9)
    W = model.init(seed=1, dtype="float64")["W"]
    assert np.allclose(W @ W.T, 0.81 * np.eye(16), atol=1e-12)


def test_the_initializer_travels_with_the_config() -> None:
    model = bptt.RNN(2, 8, 1, cell="relu", initializer="identity", init_scale=0.25)
    again = bptt.RNN.from_config(model.config())
    assert again == model and again.init_scale == 0.25
    config = TrainConfig(init="identity", init_scale=0.25, cell="relu")
    assert config.model(5).initializer == "identity" and config.model(5).init_scale == 0.25
    assert "identity" in INITS


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "1", True])
def test_a_bad_scale_is_refused_by_name(bad: object) -> None:
    with pytest.raises(ValueError, match="init_scale"):
        bptt.RNN(2, 8, 1, init_scale=bad)
    with pytest.raises(ValueError, match="init_scale"):
        TrainConfig(init_scale=bad)
