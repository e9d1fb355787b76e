"""Keras's own TensorBoard test scenarios (keras/src/callbacks/tensorboard_test.py),
each run once with ``keras.callbacks.TensorBoard`` and once with
``tbgrad.TensorBoard`` on the same model, data and arguments: every
(folder, tag, step) Keras writes, tbgrad writes too, with the same value."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util

import tbgrad

# Values that are timings or traces, not the same twice.
UNEQUAL = ("steps_per_second", "batch_1")


def _written(logdir) -> tuple[dict, dict]:
    """``{(folder, tag, step): [values]}`` of every summary under ``logdir``
    (read with TensorBoard's loader; a step written by two fits has two
    values), and ``{folder: graphs written}``."""
    values, graphs = {}, {}
    for folder, _, files in os.walk(logdir):
        for name in sorted(f for f in files if f.startswith("events.out.")):
            where = os.path.relpath(folder, logdir)
            graphs.setdefault(where, 0)
            for event in event_file_loader.EventFileLoader(os.path.join(folder, name)).Load():
                graphs[where] += bool(event.graph_def)
                for value in event.summary.value:
                    array = tensor_util.make_ndarray(value.tensor)
                    values.setdefault((where, value.tag, event.step), []).append(array)
    return values, graphs


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if b.dtype == object:  # the model's config, an encoded image
        return a.tolist() == b.tolist()
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-7)


def _model(name="model"):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((10, 10, 1), name="in"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(1, name="d"),
        ],
        name=name,
    )


def _compiled(optimizer=None):
    # Named: the model's config (the ``keras`` tag) holds the names.
    model = _model()
    model.compile(optimizer or keras.optimizers.SGD(name="sgd"), "mse")
    return model


def _xy():
    return np.ones((10, 10, 10, 1), "float32"), np.ones((10, 1), "float32")


def _fit(model, callback, validation=True, times=1, epochs=2):
    x, y = _xy()
    for _ in range(times):
        model.fit(
            x,
            y,
            batch_size=2,
            epochs=epochs,
            validation_data=(x, y) if validation else None,
            verbose=0,
            callbacks=[callback],
        )


def _basic(make, logdir):
    _fit(_compiled(), make(logdir))


def _across_invocations(make, logdir):
    _fit(_compiled(), make(logdir), times=2)


def _no_spurious_event_files(make, logdir):
    _fit(_compiled(), make(logdir), validation=False)


def _batch_metrics(make, logdir):
    _fit(_compiled(), make(logdir, update_freq=1))


def _update_freq_not_dividing_the_epoch(make, logdir):
    # 5 steps an epoch, every 3rd recorded: the model's tag still written.
    _fit(_compiled(), make(logdir, update_freq=3))


def _learning_rate_schedules(make, logdir):
    optimizer = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.01, 1), name="sgd")
    _fit(_compiled(optimizer), make(logdir), validation=False)


def _global_step(make, logdir):
    optimizer = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.01, 1), name="sgd")
    callback = make(logdir, update_freq=1, profile_batch=0, write_steps_per_second=True)
    _fit(_compiled(optimizer), callback, validation=False)


def _weight_histograms(make, logdir):
    _fit(_compiled(), make(logdir, histogram_freq=1))


def _weight_images(make, logdir):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((10, 10, 1), name="in"),
            keras.layers.Conv2D(3, 10, name="conv"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(1, name="d"),
        ],
        name="model",
    )
    model.compile(keras.optimizers.SGD(name="sgd"), "mse")
    _fit(model, make(logdir, histogram_freq=1, write_images=True))


def _projector(make, logdir):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((10,), name="in"),
            keras.layers.Embedding(10, 10, name="test_embedding"),
            keras.layers.Dense(1, activation="sigmoid", name="d"),
        ],
        name="model",
    )
    model.compile(
        keras.optimizers.Adam(name="adam"), keras.losses.BinaryCrossentropy(from_logits=True)
    )
    x, y = np.ones((10, 10)), np.ones((10, 10))
    callback = make(
        logdir, embeddings_freq=1, embeddings_metadata={"test_embedding": "metadata.tsv"}
    )
    model.fit(x, y, batch_size=2, epochs=2, validation_data=(x, y), verbose=0, callbacks=[callback])


class LayerWithSummary(keras.layers.Layer):
    def call(self, x):
        tf.summary.scalar("custom_summary", keras.ops.sum(x))
        return x


def _custom_summary(make, logdir):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5,), name="in"),
            LayerWithSummary(name="summing"),
            keras.layers.Dense(5, name="d"),
        ],
        name="model",
    )
    model.compile(
        keras.optimizers.SGD(name="sgd"), "mse", jit_compile=False
    )  # summary ops are not XLA ops
    x, y = np.ones((10, 5)), np.ones((10, 5))
    model.fit(
        x,
        y,
        batch_size=2,
        validation_data=(x, y),
        verbose=0,
        callbacks=[make(logdir, update_freq=1)],
    )


def _non_blocking(make, logdir):
    # Keras's sequence of hooks without fit, a metric given as a tensor.
    model = _compiled(keras.optimizers.Adam(name="adam"))
    callbacks = keras.callbacks.CallbackList(
        [make(logdir)], model=model, epochs=1, steps=100, verbose=0
    )
    logs = {"metric": keras.ops.convert_to_tensor(1.0)}
    callbacks.on_train_begin(logs)
    callbacks.on_epoch_begin(0, logs)
    callbacks.on_train_batch_begin(0, logs)
    callbacks.on_train_batch_end(0, logs)
    callbacks.on_epoch_end(0, logs)
    callbacks.on_train_end(logs)
    callbacks.on_test_begin(logs)
    callbacks.on_test_batch_begin(0, logs)
    callbacks.on_test_batch_end(0, logs)
    callbacks.on_test_end(logs)


def _profiling(make, logdir):
    _fit(_compiled(), make(logdir, histogram_freq=1, profile_batch=1, write_graph=False))


def _model_and_train_graph(make, logdir):
    _fit(_compiled(), make(logdir, write_graph=True, profile_batch=0), epochs=3)


def _evaluate(make, logdir):
    model = _compiled()
    x, y = _xy()
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    model.evaluate(x, y, batch_size=2, verbose=0, callbacks=[make(logdir)])


SCENARIOS = {
    "basic": _basic,
    "across_invocations": _across_invocations,
    "no_spurious_event_files": _no_spurious_event_files,
    "batch_metrics": _batch_metrics,
    "update_freq_not_dividing_the_epoch": _update_freq_not_dividing_the_epoch,
    "learning_rate_schedules": _learning_rate_schedules,
    "global_step": _global_step,
    "weight_histograms": _weight_histograms,
    "weight_images": _weight_images,
    "projector": _projector,
    "custom_summary": _custom_summary,
    "non_blocking": _non_blocking,
    "profiling": _profiling,
    "model_and_train_graph": _model_and_train_graph,
    "evaluate": _evaluate,
}
FAST = ("basic", "custom_summary", "evaluate")


def _keras(logdir, **kwargs):
    return keras.callbacks.TensorBoard(logdir, **kwargs)


def _ours(logdir, **kwargs):
    # tbgrad's own defaults (histogram_freq=1): it writes more than Keras.
    return tbgrad.TensorBoard(logdir, **kwargs)


@pytest.mark.parametrize(
    "scenario",
    [s if s in FAST else pytest.param(s, marks=pytest.mark.slow) for s in SCENARIOS],
)
def test_what_keras_writes_tbgrad_writes(tmp_path, scenario):
    SCENARIOS[scenario](_keras, str(tmp_path / "keras"))
    SCENARIOS[scenario](_ours, str(tmp_path / "ours"))
    theirs, their_graphs = _written(tmp_path / "keras")
    ours, our_graphs = _written(tmp_path / "ours")
    assert theirs, "Keras's callback wrote nothing: the scenario is wrong"
    assert set(theirs) - set(ours) == set()
    for key, values in theirs.items():
        if any(part in key[1] for part in UNEQUAL):
            continue
        for value in values:
            assert any(_same(mine, value) for mine in ours[key]), (key, value, ours[key])
    # Event files in the folders Keras writes, and its graphs.
    assert set(our_graphs) == set(their_graphs)
    for folder, count in their_graphs.items():
        assert our_graphs[folder] >= count, folder
    if scenario == "projector":
        for name in ("projector_config.pbtxt",):
            theirs_text = (tmp_path / "keras" / name).read_text()
            assert (tmp_path / "ours" / name).read_text() == theirs_text
        for name in sorted(os.listdir(tmp_path / "keras" / "train")):
            if name.startswith("keras_embedding"):
                assert (tmp_path / "ours" / "train" / name).exists(), name
    if scenario == "profiling":
        assert list((tmp_path / "ours" / "train" / "plugins" / "profile").rglob("*.xplane.pb"))
