"""The execution modes agree: every tag the same without XLA, with XLA and
with ``stats_every`` (on the same counted steps); ``grad_norm`` against an
independent tape through ``fit``, the tape loop and ``GradientLogger``."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbgrad
from tbgrad.eventlog import load_run

LAYERS = ["t", "r", "out"]
BATCH = 8


def _model():
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(6, "tanh", name="t"),
            keras.layers.Dense(5, "relu", name="r"),
            keras.layers.Dense(1, "sigmoid", name="out"),
        ],
        name="model",  # in the path of Keras's per-weight histogram tags
    )


def _data(repeat: int = 1):
    # Each batch ``repeat`` times in a row: with the weights held still
    # (learning rate 0), stats_every=repeat counts steps equal to those it
    # leaves out.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * BATCH, 3)).astype("float32") * 3
    y = (x[:, :1] > 0).astype("float32")
    xs = np.concatenate(
        [np.repeat(x[i : i + BATCH][None], repeat, 0) for i in range(0, len(x), BATCH)]
    )
    ys = np.concatenate(
        [np.repeat(y[i : i + BATCH][None], repeat, 0) for i in range(0, len(y), BATCH)]
    )
    return xs.reshape(-1, 3), ys.reshape(-1, 1)


def _fit(path, lr, jit, repeat=1, **kwargs):
    model = _model()
    optimizer = keras.optimizers.SGD(lr, momentum=0.5, clipnorm=0.5)
    model.compile(optimizer, "binary_crossentropy", jit_compile=jit)
    x, y = _data(repeat)
    callback = tbgrad.TensorBoard(path, **kwargs)
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[callback])
    return load_run(path).train


def _assert_same_tags(a, b):
    # Every scalar tbgrad writes (Keras's epoch_* timing aside) and every histogram.
    scalars = sorted(t for t in a.scalars if not t.startswith("epoch_"))
    assert scalars == sorted(t for t in b.scalars if not t.startswith("epoch_"))
    for tag in scalars:
        np.testing.assert_allclose(b.scalar(tag), a.scalar(tag), rtol=1e-3, atol=1e-7, err_msg=tag)
    assert sorted(a.histograms) == sorted(b.histograms)


@pytest.mark.slow
def test_xla_logs_what_the_plain_step_logs(tmp_path):
    kwargs = dict(diagnostics_every=1)
    plain = _fit(tmp_path / "plain", 0.1, False, **kwargs)
    xla = _fit(tmp_path / "xla", 0.1, True, **kwargs)
    _assert_same_tags(plain, xla)
    assert plain.scalar("clip/share").max() > 0  # clipping acted


@pytest.mark.slow
@pytest.mark.parametrize("jit", [False, True], ids=["plain", "xla"])
def test_stats_every_logs_what_every_step_logs_on_the_same_steps(tmp_path, jit):
    # Steps 2k and 2k+1 see the same batch and the same weights: counting
    # every second step must give exactly the epoch's figures. The clipping
    # statistics included (they follow the diagnostics' cadence).
    every = _fit(tmp_path / "every", 0.0, jit, repeat=2, diagnostics_every=1)
    second = _fit(tmp_path / "second", 0.0, jit, repeat=2, stats_every=2, diagnostics_every=2)
    _assert_same_tags(every, second)


def _tape_norms(model, x, y, loss_fn):
    # Per batch, from the same weights (learning rate 0): each layer's ||g||.
    out = []
    for i in range(0, len(x), BATCH):
        with tf.GradientTape() as tape:
            loss = loss_fn(y[i : i + BATCH], model(x[i : i + BATCH], training=True))
        kernels = [model.get_layer(n).kernel for n in LAYERS]
        out.append([np.linalg.norm(g.numpy()) for g in tape.gradient(loss, kernels)])
    return np.mean(out, axis=0)


def _loss(y, p):
    return tf.reduce_mean(keras.losses.binary_crossentropy(y, p))


@pytest.mark.parametrize("path", ["fit", "tape", "logger"])
def test_grad_norm_equals_an_independent_tape(tmp_path, path):
    x, y = _data()
    model = _model()
    want = _tape_norms(model, x, y, _loss)
    if path == "fit":
        model.compile(keras.optimizers.SGD(0.0), "binary_crossentropy")
        model.fit(
            x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
            callbacks=[tbgrad.TensorBoard(tmp_path)],
        )  # fmt: skip
    elif path == "tape":
        tbgrad.train_with_tape(
            model, x, y, batch_size=BATCH, shuffle=False, optimizer=keras.optimizers.SGD(0.0),
            log_dir=tmp_path, verbose=0,
        )  # fmt: skip
    else:
        optimizer = keras.optimizers.SGD(0.0)
        with tbgrad.GradientLogger(model, tmp_path, optimizer=optimizer) as logger:

            @tf.function
            def step(xb, yb):
                with tf.GradientTape() as tape:
                    loss = _loss(yb, model(xb, training=True))
                variables = model.trainable_variables
                optimizer.apply(tape.gradient(loss, variables), variables)

            for i in range(0, len(x), BATCH):
                step(x[i : i + BATCH], y[i : i + BATCH])
            logger.end_epoch(0)
    train = load_run(tmp_path).train
    got = [train.scalar(f"grad_norm/{n}")[0] for n in LAYERS]
    np.testing.assert_allclose(got, want, rtol=1e-4)
