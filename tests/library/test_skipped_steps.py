"""Mixed precision with loss-scale overflow: the steps a LossScaleOptimizer
skips are counted, kept out of the averages and out of the histograms."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import expected_histogram

import tbgrad
from tbgrad import tags
from tbgrad.eventlog import load_run

# A loss scale of 2**40 overflows float16 in the backward pass: the first
# steps are skipped while the optimizer halves the scale, then it applies.
INITIAL_SCALE = 2.0**40
BATCH = 8
STEPS = 8  # per epoch: 64 samples
EPOCHS = 4
LR = 0.1


@pytest.fixture
def mixed_float16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy(previous)


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="tanh", name="h"),
            keras.layers.Dense(1, activation="sigmoid", name="out", dtype="float32"),
        ]
    )


def _data():
    x = np.random.default_rng(0).normal(size=(BATCH * STEPS, 3)).astype("float32")
    return x, (x[:, 0] > 0).astype("float32")


def _optimizer():
    return keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(LR), initial_scale=INITIAL_SCALE
    )


def test_fit_counts_skipped_steps_from_keras_s_own_counters(tmp_path, mixed_float16):
    model = _model()
    optimizer = _optimizer()
    model.compile(optimizer, "binary_crossentropy")
    applied = []  # the inner optimizer's iterations: applied steps only
    count = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: applied.append(int(optimizer.iterations.numpy()))
    )
    x, y = _data()
    model.fit(
        x,
        y,
        epochs=EPOCHS,
        batch_size=BATCH,
        shuffle=False,
        verbose=0,
        callbacks=[tbgrad.TensorBoard(tmp_path), count],
    )
    per_epoch = np.diff([0, *applied])
    skipped = STEPS - per_epoch
    run = load_run(tmp_path)
    np.testing.assert_array_equal(run.train.scalar(tags.GRAD_SKIPPED_STEPS), skipped)
    assert skipped[0] == STEPS and per_epoch[-1] > 0  # the case the test is about
    # Epochs without an applied step have no gradient tags; the others do.
    with_steps = [e for e in range(EPOCHS) if per_epoch[e] > 0]
    for layer in ("h", "out"):
        assert run.train.steps(f"grad_mean_abs/{layer}") == with_steps
        assert run.train.steps(f"gradients/{layer}") == with_steps
        assert run.train.steps(f"weights/{layer}") == list(range(EPOCHS))
        assert (run.train.scalar(f"grad_mean_abs/{layer}") > 0).all()


@pytest.mark.parametrize("compiled", [True, False], ids=["tf.function", "eager"])
def test_own_loop_averages_over_applied_steps_only(tmp_path, mixed_float16, compiled):
    model = _model()
    optimizer = _optimizer()
    loss_fn = keras.losses.BinaryCrossentropy()
    kernels = [model.get_layer(name).kernel for name in ("h", "out")]
    optimizer.build(model.trainable_variables)  # its dynamic_scale is read below
    logger = tbgrad.GradientLogger(model, tmp_path, optimizer=optimizer).attach()

    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        # What the optimizer will apply if every entry is finite: the
        # gradients divided by the current scale.
        by_var = {id(v): g for v, g in zip(model.trainable_variables, grads)}
        unscaled = [by_var[id(k)] / optimizer.dynamic_scale for k in kernels]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        optimizer.apply(grads, model.trainable_variables)
        return unscaled, finite

    step = tf.function(train_step) if compiled else train_step
    x, y = _data()
    seen = []
    for epoch in range(EPOCHS):
        seen.append([])
        for start in range(0, len(x), BATCH):
            unscaled, finite = step(x[start : start + BATCH], y[start : start + BATCH])
            seen[-1].append(([g.numpy() for g in unscaled], bool(finite)))
        logger.end_epoch(epoch)
    logger.close()
    run = load_run(tmp_path)
    skipped = [sum(not ok for _, ok in epoch) for epoch in seen]
    np.testing.assert_array_equal(run.train.scalar(tags.GRAD_SKIPPED_STEPS), skipped)
    mixed = [e for e in range(EPOCHS) if 0 < skipped[e] < STEPS]
    assert mixed, f"no epoch with both skipped and applied steps: {skipped}"
    for i, layer in enumerate(("h", "out")):
        applied = [[grads[i] for grads, ok in epoch if ok] for epoch in seen]
        with_steps = [e for e in range(EPOCHS) if applied[e]]
        assert run.train.steps(f"grad_mean_abs/{layer}") == with_steps
        want = [np.mean([np.abs(g).mean() for g in applied[e]]) for e in with_steps]
        got = run.train.scalar(f"grad_mean_abs/{layer}")
        np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=layer)
        histograms = dict(run.train.histograms[f"gradients/{layer}"])
        for e in mixed:
            first = applied[e][0]  # the epoch's first applied step
            np.testing.assert_allclose(
                histograms[e][:, :2], expected_histogram(first)[:, :2], rtol=1e-4
            )
