"""Data sets, the MLP builder, initializer names, optimizers, presets, run names."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tbgrad
from tbgrad.lab.config import PRESETS, make_config
from tbgrad.lab.runs import create_run_dir


def test_circles_a_is_study_a():
    data = tbgrad.lab.load_dataset("circles-a")
    assert data.x_train.shape == (500, 2) and data.x_test.shape == (500, 2)
    x = np.concatenate([data.x_train, data.x_test])
    np.testing.assert_allclose(x.min(axis=0), -1, atol=1e-6)
    np.testing.assert_allclose(x.max(axis=0), 1, atol=1e-6)
    assert set(np.unique(data.y_train)) == {0.0, 1.0}


def test_circles_b_has_no_split():
    data = tbgrad.lab.load_dataset("circles-b")
    assert data.x_train.shape == (1000, 2)
    assert data.x_test is data.x_train


def test_unknown_dataset():
    with pytest.raises(
        ValueError, match="valid choices: circles-a, circles-b. Received: name='moons'"
    ):
        tbgrad.lab.load_dataset("moons")


def test_layer_names_are_stable_across_models():
    first = tbgrad.lab.build_mlp(depth=3)
    second = tbgrad.lab.build_mlp(depth=3)
    names = ["hidden_1", "hidden_2", "hidden_3", "output"]
    assert [layer.name for layer in first.layers] == names
    assert [layer.name for layer in second.layers] == names
    assert [layer.name for layer in tbgrad.tracked_variables(second)] == names


@pytest.mark.parametrize(
    "init, lo, hi",
    [("uniform01", 0.0, 1.0)],
)
def test_uniform01_on_every_layer(init, lo, hi):
    model = tbgrad.lab.build_mlp(depth=2, width=50, init=init, activation="tanh", seed=1)
    for layer in model.layers:
        kernel = layer.kernel.numpy()
        assert kernel.min() >= lo and kernel.max() <= hi


def test_he_hidden_layers_and_glorot_output_as_in_study_a():
    model = tbgrad.lab.build_mlp(depth=2, width=5, init="he_uniform", activation="relu")
    hidden = model.get_layer("hidden_1").kernel_initializer
    output = model.get_layer("output").kernel_initializer
    assert isinstance(hidden, keras.initializers.HeUniform)
    assert isinstance(output, keras.initializers.GlorotUniform)


def test_normal_and_xavier_aliases():
    normal = tbgrad.lab.make_initializer("normal")
    assert isinstance(normal, keras.initializers.RandomNormal)
    assert normal.stddev == 1.0
    assert isinstance(tbgrad.lab.make_initializer("xavier"), keras.initializers.GlorotUniform)
    assert isinstance(tbgrad.lab.make_initializer("lecun_normal"), keras.initializers.LecunNormal)


def test_each_model_gets_its_own_optimizer():
    first, second = tbgrad.lab.make_optimizer("adam"), tbgrad.lab.make_optimizer("adam")
    assert first is not second
    sgd = tbgrad.lab.make_optimizer("sgd")
    assert float(sgd.learning_rate) == pytest.approx(0.01)
    assert sgd.momentum == 0.0


def test_presets_and_overrides():
    config = make_config("A3", depth=7)
    assert (config.act, config.init, config.depth, config.epochs) == ("relu", "he_uniform", 7, 500)
    assert config.run_name() == "A3-relu-he_uniform-d7-w5-sgd-s1"
    assert make_config().run_name() == "relu-he_uniform-d5-w5-sgd-s1"
    assert make_config(act="tanh", init="uniform01").run_name() == "tanh-uniform01-d5-w5-sgd-s1"
    b = make_config("B-sigmoid")
    assert (b.optimizer, b.learning_rate, b.momentum_value, b.dataset) == (
        "rmsprop",
        0.001,
        0.0,
        "circles-b",
    )
    assert set(PRESETS) == {"A1", "A2", "A3", "A4", "A5", "B-sigmoid", "B-tanh", "B-relu"}


def test_run_dirs_are_never_reused(tmp_path):
    first = create_run_dir(tmp_path, "run")
    second = create_run_dir(tmp_path, "run")
    third = create_run_dir(tmp_path, "a/b c")
    assert [first.name, second.name, third.name] == ["run", "run-2", "a_b_c"]


def test_public_surface_resolves():
    assert sorted(tbgrad.__all__) == sorted(tbgrad._PUBLIC)
    for name in tbgrad.__all__:
        assert getattr(tbgrad, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tbgrad.nope  # noqa: B018
