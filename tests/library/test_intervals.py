"""One long epoch: ``stats_freq=N`` writes every statistic per N-step interval.

A one-epoch ``fit`` of 200 steps with ``stats_freq=20`` must write 10 points
of every statistic at the global steps 20, 40, ..., 200, each exact over its
interval's applied steps: checked against a tape replay of the same batches
from the same weights (the learning rate at 0 keeps them put).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbgrad
from tbgrad import tags

STEPS, EVERY, BATCH = 200, 20, 4


@pytest.fixture(scope="module")
def one_long_epoch(tmp_path_factory):
    keras.utils.set_random_seed(11)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="tanh", name="hidden"),
            keras.layers.Dense(1, activation="sigmoid", name="output"),
        ],
        name="intervals",
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 3)).astype("float32")
    y = (rng.random(STEPS * BATCH) > 0.5).astype("float32")
    model.compile(keras.optimizers.SGD(0.0, name="sgd"), "binary_crossentropy")
    log_dir = tmp_path_factory.mktemp("intervals")
    model.fit(
        x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
        callbacks=[tbgrad.TensorBoard(log_dir, write_graph=False, stats_freq=EVERY)],
    )  # fmt: skip
    layers = tbgrad.tracked_variables(model)
    mean_abs = np.zeros((STEPS, len(layers)))
    norms = np.zeros((STEPS, len(layers)))
    for step in range(STEPS):
        xb, yb = x[step * BATCH : (step + 1) * BATCH], y[step * BATCH : (step + 1) * BATCH]
        with tf.GradientTape() as tape:
            loss = keras.losses.binary_crossentropy(yb[:, None], model(xb, training=True))
            loss = tf.reduce_mean(loss)
        grads = tape.gradient(loss, [layer.kernel.value for layer in layers])
        for j, g in enumerate(grads):
            g = g.numpy().astype(np.float64)
            mean_abs[step, j], norms[step, j] = np.abs(g).mean(), np.sqrt((g * g).sum())
    return log_dir, [layer.name for layer in layers], mean_abs, norms


def test_ten_points_exact_over_each_interval(one_long_epoch):
    log_dir, names, mean_abs, norms = one_long_epoch
    train = tbgrad.load_run(log_dir).train
    expected_steps = list(range(EVERY, STEPS + 1, EVERY))
    for j, name in enumerate(names):
        for family, per_step in ((tags.GRAD_MEAN_ABS, mean_abs), (tags.GRAD_NORM, norms)):
            tag = tags.layer_tag(family, name)
            assert train.steps(tag) == expected_steps, tag
            expected = per_step[:, j].reshape(-1, EVERY).mean(axis=1)
            np.testing.assert_allclose(train.scalar(tag), expected, rtol=1e-4, err_msg=tag)
        peak = mean_abs[:, j].reshape(-1, EVERY).max(axis=1)
        tag = tags.layer_tag(tags.GRAD_MEAN_ABS_MAX, name)
        np.testing.assert_allclose(train.scalar(tag), peak, rtol=1e-4, err_msg=tag)
        # Histograms and the diagnostics run per interval too.
        for family in (tags.GRADIENTS, tags.WEIGHTS):
            assert train.steps(tags.layer_tag(family, name)) == expected_steps
        assert train.steps(tags.layer_tag(tags.UPDATE_RATIO, name)) == expected_steps
    # Keras's epoch scalars stay per epoch.
    assert train.steps(tags.epoch_tag("loss")) == [0]


def test_gradient_flow_and_verdict_read_steps(one_long_epoch, plugin_get):
    log_dir = one_long_epoch[0]
    (run,) = plugin_get(log_dir, "/runs")
    heatmap = plugin_get(log_dir, "/heatmap", f"run={run['run']}&stat=grad_mean_abs")
    assert len(heatmap["epochs"]) == STEPS // EVERY
    assert tbgrad.verdict_of(log_dir).label in ("healthy", "vanishing", "exploding")
