"""Update-to-weight ratios against the weights read around each step of a
hand-written loop with the same optimizer."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_mlp, update_ratios_by_hand

import tbgrad
from tbgrad import tags
from tbgrad.eventlog import load_run

EPOCHS = 2
BATCH = 64
N = 200  # 3 steps of 64 and one of 8 per epoch
LAYERS = ["hidden_1", "hidden_2", "output"]


def _optimizer(name: str) -> keras.optimizers.Optimizer:
    # Weight decay, clipping and a schedule all move the weights apart from
    # the plain gradient step; the ratio must include them.
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=2, decay_rate=0.5)
    if name == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=0.1, clipnorm=0.05)
    if name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, global_clipnorm=0.1)
    return keras.optimizers.RMSprop(0.01, clipvalue=0.01)


def _reference_ratios(model, optimizer, x, y, every: int = 1) -> np.ndarray:
    """[epochs, layers]: the mean over each epoch's steps 0, every, ... of
    ||w_after - w_before|| / ||w_before||, read around ``optimizer.apply``."""
    kernels = [model.get_layer(name).kernel for name in LAYERS]

    def loss(yb, pred):
        return tf.reduce_mean(keras.losses.binary_crossentropy(yb, pred))

    ratios = update_ratios_by_hand(model, optimizer, kernels, x, y, BATCH, EPOCHS, loss)
    return np.array([np.mean(steps[::every], axis=0) for steps in ratios])


def _train(path, loop: str, optimizer: str, x, y, every: int = 1):
    model = tiny_mlp()
    if loop == "fit":
        model.compile(_optimizer(optimizer), "binary_crossentropy")
        callback = tbgrad.TensorBoard(path, histogram_freq=0, diagnostics_every=every)
        model.fit(
            x, y, epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[callback]
        )
    else:
        tbgrad.train_with_tape(
            model,
            x,
            y,
            epochs=EPOCHS,
            batch_size=BATCH,
            shuffle=False,
            optimizer=_optimizer(optimizer),
            log_dir=path,
            verbose=0,
            histogram_freq=0,
            jit_compile=loop == "tape+xla",
            diagnostics_every=every,
        )


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "rmsprop"])
@pytest.mark.parametrize("loop", ["fit", "tape", "tape+xla"])
def test_update_ratio_is_the_optimizers_move_over_the_weights(tmp_path, circles, loop, optimizer):
    x, y = circles.x_train[:N], circles.y_train[:N]
    _train(tmp_path, loop, optimizer, x, y)
    expected = _reference_ratios(tiny_mlp(), _optimizer(optimizer), x, y)
    train = load_run(tmp_path).train
    logged = np.array([train.scalar(tags.layer_tag(tags.UPDATE_RATIO, n)) for n in LAYERS]).T
    assert logged.shape == (EPOCHS, len(LAYERS))
    np.testing.assert_allclose(logged, expected, rtol=1e-4)
    # The figures are the optimizer's own size of step, not a constant.
    assert np.all(expected > 1e-4) and np.all(expected < 1)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "fit+xla"])
def test_update_ratio_with_diagnostics_every_is_over_those_steps(tmp_path, circles, loop):
    # Without XLA a step left out reads no kernel; with XLA it is measured
    # and masked. Either way the mean is over the steps 0 and 2 of 4.
    x, y = circles.x_train[:N], circles.y_train[:N]
    model = tiny_mlp()
    model.compile(_optimizer("sgd"), "binary_crossentropy", jit_compile=loop == "fit+xla")
    callback = tbgrad.TensorBoard(tmp_path, histogram_freq=0, diagnostics_every=2)
    model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[callback])
    expected = _reference_ratios(tiny_mlp(), _optimizer("sgd"), x, y, every=2)
    everything = _reference_ratios(tiny_mlp(), _optimizer("sgd"), x, y)
    train = load_run(tmp_path).train
    logged = np.array([train.scalar(tags.layer_tag(tags.UPDATE_RATIO, n)) for n in LAYERS]).T
    np.testing.assert_allclose(logged, expected, rtol=1e-4)
    assert not np.allclose(expected, everything, rtol=1e-2)
