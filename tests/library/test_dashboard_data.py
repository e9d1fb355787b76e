"""The Gradient-flow plugin's answers on runs read through TensorBoard's own
data provider (no server, no browser): the relative view's reference row
with ``variables="all"``, and the first-NaN note of a non-finite run."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tbgrad


def _fit(path, lr, variables="kernels", epochs=2):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(3, "tanh", name="h"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    model.compile(keras.optimizers.SGD(lr), "mse")
    x = np.random.default_rng(0).normal(size=(32, 2)).astype("float32")
    model.fit(
        x, x[:, :1] * 1e3, batch_size=8, epochs=epochs, verbose=0,
        callbacks=[tbgrad.TensorBoard(path, variables=variables)],
    )  # fmt: skip


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    _fit(root / "all", 0.01, variables="all")
    _fit(root / "nan", 1e30)  # the weights blow up: NaN within the first epoch
    return root


def test_relative_view_divides_by_the_output_kernel_not_its_bias(logdir, plugin_get):
    got = plugin_get(logdir, "/heatmaps", "run=all/train&stat=grad_mean_abs&relative=1")
    (heatmap,) = got["runs"]
    rows = dict(zip(heatmap["layers"], heatmap["values"]))
    assert rows["out"] == [1.0, 1.0]
    assert rows["out/bias"] != [1.0, 1.0]


def test_the_explanation_of_a_non_finite_run_notes_its_first_nan(logdir, plugin_get):
    (run,) = [r for r in plugin_get(logdir, "/runs") if r["name"] == "nan"]
    assert run["verdict"]["label"] == tbgrad.verdict_of(logdir / "nan").label == "non-finite"
    notes = run["verdict"]["explanation"]["notes"]
    want = tbgrad.verdict_of(logdir / "nan").explanation.notes
    assert notes and list(notes) == list(want)
    assert notes[0].startswith("first NaN or Inf in epoch 0")
