"""The callback on other model kinds, optimizers and Keras's own callback."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbgrad
from tbgrad import _compat
from tbgrad.eventlog import load_run


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (x[:, 0] * x[:, 1] > 0).astype("float32")
    return x, y


def _layers_logged(run):
    return sorted(t.split("/", 1)[1] for t in run.train.plugins if t.startswith("grad_mean_abs/"))


def test_functional_model_with_kernel_free_layers(tmp_path):
    inputs = keras.Input((3,))
    h = keras.layers.Dense(4, activation="relu", name="a")(inputs)
    h = keras.layers.Dropout(0.1)(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="out")(h)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "binary_crossentropy")
    x, y = _data()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[tbgrad.TensorBoard(tmp_path)])
    run = load_run(tmp_path)
    assert _layers_logged(run) == ["a", "out"]
    assert run.train.steps("gradients/a") == [0, 1]


class TwoTower(keras.Model):
    def __init__(self):
        super().__init__()
        self.left = keras.layers.Dense(3, name="left")
        self.right = keras.Sequential([keras.layers.Dense(3, name="inner")], name="block")
        self.head = keras.layers.Dense(1, activation="sigmoid", name="head")

    def call(self, x):
        return self.head(tf.concat([self.left(x), self.right(x)], axis=-1))


def test_subclassed_model_with_nested_sequential(tmp_path):
    model = TwoTower()
    model.compile(keras.optimizers.RMSprop(), "binary_crossentropy")
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[tbgrad.TensorBoard(tmp_path)])
    assert _layers_logged(load_run(tmp_path)) == ["head", "inner", "left"]


def test_logs_the_gradient_after_clipping(tmp_path):
    # clipvalue changes what is applied: the histogram's range must be clipped.
    keras.utils.set_random_seed(0)
    model = tbgrad.lab.build_mlp(depth=1, width=4, activation="relu", init="normal", input_dim=3)
    model.compile(keras.optimizers.SGD(0.1, clipvalue=1e-3), "binary_crossentropy")
    x, y = _data()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[tbgrad.TensorBoard(tmp_path)])
    hist = load_run(tmp_path).train.histograms["gradients/hidden_1"][0][1]
    assert hist[0, 0] >= -1e-3 - 1e-9
    assert hist[-1, 1] <= 1e-3 + 1e-9


def test_epoch_summaries_survive_keras_record_if(tmp_path):
    # Keras's TensorBoard(update_freq=N) leaves record_if false at epoch ends
    # whose step count N does not divide (tensorflow/tensorboard#4975).
    x, y = _data(n=50)
    model = tbgrad.lab.build_mlp(depth=1, width=3, input_dim=3)
    model.compile("sgd", "binary_crossentropy")
    model.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(tmp_path / "keras", update_freq=7),
            tbgrad.TensorBoard(tmp_path / "ours"),
        ],
    )
    run = load_run(tmp_path / "ours")
    assert run.train.steps("epoch_loss") == [0, 1, 2]
    assert run.train.steps("grad_mean_abs/output") == [0, 1, 2]


def test_second_fit_continues_logging_and_later_fits_are_untouched(tmp_path):
    x, y = _data()
    model = tbgrad.lab.build_mlp(depth=1, width=3, input_dim=3)
    model.compile("sgd", "binary_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)  # traced without the callback
    callback = tbgrad.TensorBoard(tmp_path)
    model.fit(x, y, epochs=2, verbose=0, validation_data=(x, y), callbacks=[callback])
    run = load_run(tmp_path)
    assert run.train.scalar("grad_mean_abs/output").min() > 0
    assert run.train.steps("grad_mean_abs/output") == [0, 1]
    optimizer = model.optimizer
    assert not _compat.is_update_step_wrapped(optimizer)
    files = _contents(tmp_path)
    stats = callback.collector.epoch()
    kernel = model.get_layer("output").kernel.numpy()
    model.fit(x, y, epochs=3, verbose=0, validation_data=(x, y))
    # The later fit trained (the weights moved) ...
    assert not np.array_equal(model.get_layer("output").kernel.numpy(), kernel)
    # ... through the plain update step: the hook stays removed and the
    # callback's statistics did not move.
    assert not _compat.is_update_step_wrapped(optimizer)
    after = callback.collector.epoch()
    assert after.seen == stats.seen == 2  # 64 samples in batches of 32
    for tag in [t for t in stats.values if t.startswith("grad_")]:
        np.testing.assert_array_equal(after.values[tag], stats.values[tag], err_msg=tag)
    # Nothing was added to the run folder: same files, bytes, tags and steps.
    assert _contents(tmp_path) == files
    again = load_run(tmp_path)
    for split in ("train", "validation"):
        before_split, after_split = run.splits[split], again.splits[split]
        assert after_split.plugins == before_split.plugins, split
        for tag in before_split.plugins:
            assert after_split.steps(tag) == before_split.steps(tag), (split, tag)


def _contents(folder):
    """Every file under ``folder``: its bytes and modification time."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_model_without_kernels_warns_and_still_writes_epoch_scalars(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda t: t[:, :1])])
    model.compile("sgd", "mse")
    x, y = _data()
    with pytest.warns(UserWarning, match="no trainable weight matrix"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[tbgrad.TensorBoard(tmp_path)])
    run = load_run(tmp_path)
    assert run.train.steps("epoch_loss") == [0, 1]
    assert not any(t.startswith("grad") for t in run.train.plugins)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(histogram_freq=-1), ValueError, "Received: histogram_freq=-1"),
        (dict(histogram_freq=1.5), TypeError, "Received: histogram_freq=1.5"),
        (dict(update_freq="step"), ValueError, "Received: update_freq='step'"),
        (dict(update_freq=0), ValueError, "Received: update_freq=0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        tbgrad.TensorBoard("unused", **kwargs)
