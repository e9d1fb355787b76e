"""Exploding gradients: training goes on as Keras would, the logs stay readable.

relu, RandomNormal(0, 1) and SGD with a learning rate of 1e6 drive the
weights to Inf/NaN within the first epoch. Both paths must keep training (or
stop through keras.callbacks.TerminateOnNaN), count the non-finite gradient
entries in ``grad_nonfinite/<layer>``, keep the histograms finite, and keep
the gradient scalars finite (statistics of the finite entries).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tbgrad
from tbgrad import tags
from tbgrad.eventlog import load_run

SAMPLES, BATCH, EPOCHS = 256, 32, 3
STEPS = SAMPLES // BATCH


@pytest.fixture(scope="module")
def data(circles):
    return circles.x_train[:SAMPLES], circles.y_train[:SAMPLES]


def exploding_model():
    keras.utils.set_random_seed(0)
    return tbgrad.lab.build_mlp(depth=5, width=5, activation="relu", init="normal")


def kernel_sizes(model):
    return {k.name: int(np.prod(k.kernel.shape)) for k in tbgrad.tracked_variables(model)}


def check_logs(run_dir, sizes, epochs):
    run = load_run(run_dir)
    train = run.train
    loss = train.scalar("epoch_loss")
    assert len(loss) == epochs and np.isnan(loss[-1])  # readable, and says NaN
    for name, size in sizes.items():
        nonfinite = train.scalar(tags.layer_tag(tags.GRAD_NONFINITE, name))
        assert nonfinite[0] > 0
        # Once the weights are NaN every gradient entry of every step is.
        assert nonfinite[-1] == STEPS * size
        for family in (tags.GRAD_MEAN_ABS, tags.GRAD_STD):
            values = train.scalar(tags.layer_tag(family, name))
            assert np.isfinite(values).all(), (family, name, values)
            assert values[-1] == 0.0  # no finite entry left
        for family in tags.families(kind="histogram"):
            series = train.histograms[tags.layer_tag(family, name)]
            assert [step for step, _ in series] == list(range(epochs))
            for _, histogram in series:
                assert np.isfinite(histogram).all()
        gradients = train.histograms[tags.layer_tag(tags.GRADIENTS, name)]
        # The first step's gradients (initial weights) are finite, the last
        # epoch's are all NaN: an empty histogram.
        assert gradients[0][1][:, 2].sum() == size
        assert gradients[-1][1][:, 2].sum() == 0
    return run


def fit_exploding(log_dir, data, *callbacks):
    """Returns (model, history) of model.fit on the exploding setup."""
    x, y = data
    model = exploding_model()
    model.compile(keras.optimizers.SGD(1e6), "binary_crossentropy")
    history = model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[tbgrad.TensorBoard(log_dir), *callbacks],
    )
    return model, history.history


def test_fit_keeps_training_and_counts_nonfinite(tmp_path, data):
    model, history = fit_exploding(tmp_path, data)
    assert len(history["loss"]) == EPOCHS
    check_logs(tmp_path, kernel_sizes(model), EPOCHS)


def test_tape_keeps_training_and_counts_nonfinite(tmp_path, data):
    x, y = data
    model = exploding_model()
    history = tbgrad.train_with_tape(
        model,
        x,
        y,
        epochs=EPOCHS,
        batch_size=BATCH,
        optimizer=keras.optimizers.SGD(1e6),
        log_dir=tmp_path,
        shuffle=False,
        verbose=0,
    )
    assert len(history["loss"]) == EPOCHS
    check_logs(tmp_path, kernel_sizes(model), EPOCHS)


def test_terminate_on_nan_stops_and_the_epoch_is_logged(tmp_path, data):
    model, history = fit_exploding(tmp_path, data, keras.callbacks.TerminateOnNaN())
    assert len(history["loss"]) == 1 and np.isnan(history["loss"][0])
    train = load_run(tmp_path).train
    assert train.steps("epoch_loss") == [0]
    total = sum(
        train.scalar(tags.layer_tag(tags.GRAD_NONFINITE, name))[0] for name in kernel_sizes(model)
    )
    assert total > 0
    for name in kernel_sizes(model):
        for family in (tags.GRAD_MEAN_ABS, tags.GRAD_STD):
            assert np.isfinite(train.scalar(tags.layer_tag(family, name))).all()
