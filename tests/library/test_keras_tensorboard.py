"""tbgrad.TensorBoard as keras.callbacks.TensorBoard: its arguments, what
Keras writes for them, tbgrad's tags beside them, and KerasTuner."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tbgrad
from tbgrad import layout, tags
from tbgrad.dashboard import metadata as dashboard_metadata
from tbgrad.eventlog import find_runs, load_run

EPOCHS = 2
LAYERS = ["h", "out"]
ACTIVATIONS = {"h": "tanh", "out": "sigmoid"}
# The acceptance's arguments: every one of Keras's, with Keras's meaning.
KERAS_ARGS = dict(
    histogram_freq=1,
    write_graph=True,
    write_images=False,
    write_steps_per_second=True,
    profile_batch=0,
    embeddings_freq=0,
    update_freq="epoch",
)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, (x[:, 0] * x[:, 1] > 0).astype("float32")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="tanh", name="h"),
            keras.layers.Dense(1, activation="sigmoid", name="out"),
        ],
        name="model",
    )
    model.compile("sgd", "binary_crossentropy", metrics=["accuracy"])
    return model


def _fit(callback, epochs=EPOCHS, batch_size=16):
    x, y = _data()
    _model().fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=(x[:16], y[:16]),
        verbose=0,
        callbacks=[callback],
    )


def test_keras_s_class_name():
    assert tbgrad.TensorBoard.__name__ == "TensorBoard"  # what KerasTuner looks for
    assert issubclass(tbgrad.TensorBoard, keras.callbacks.TensorBoard)


@pytest.mark.slow
def test_acceptance_writes_what_keras_writes_and_the_gradient_tags(tmp_path):
    _fit(tbgrad.TensorBoard(tmp_path / "ours", **KERAS_ARGS))
    _fit(keras.callbacks.TensorBoard(tmp_path / "keras", **KERAS_ARGS))
    ours, theirs = load_run(tmp_path / "ours"), load_run(tmp_path / "keras")
    keras_train = dict(theirs.train.plugins)
    assert keras_train == {
        "keras": "graph_keras_model",
        **{f"epoch_{m}": "scalars" for m in ("loss", "accuracy", "learning_rate")},
        "epoch_steps_per_second": "scalars",
        **{
            f"model/{w}/histogram": "histograms"
            for w in ("h/kernel", "h/bias", "out/kernel", "out/bias")
        },
    }
    assert ours.train.plugins == {
        **keras_train,
        **tags.layer_tags(LAYERS, activations=ACTIVATIONS),
        layout.LAYOUT_TAG: "custom_scalars",
        dashboard_metadata.LAYERS_TAG: dashboard_metadata.PLUGIN_NAME,
    }
    assert (
        ours.validation.plugins
        == theirs.validation.plugins
        == {
            **{f"epoch_{m}": "scalars" for m in ("loss", "accuracy")},
            **{f"evaluation_{m}_vs_iterations": "scalars" for m in ("loss", "accuracy")},
        }
    )
    for tag in ("epoch_steps_per_second", *tags.layer_tags(LAYERS, activations=ACTIVATIONS)):
        assert ours.train.steps(tag) == list(range(EPOCHS)), tag
    assert (ours.train.scalar("epoch_steps_per_second") > 0).all()
    # One writer per folder, shared by Keras's tags and tbgrad's.
    assert len(ours.train.event_files) == len(ours.validation.event_files) == 1


def test_keras_weight_histograms_written_without_keras_s_per_weight_ops(tmp_path, monkeypatch):
    # Their values equal Keras's own (tests/library/test_keras_scenarios.py).
    def fail(self, epoch):
        raise AssertionError("Keras's _log_weights ran")

    monkeypatch.setattr(keras.callbacks.TensorBoard, "_log_weights", fail)
    _fit(tbgrad.TensorBoard(tmp_path, histogram_freq=1))
    run = load_run(tmp_path)
    for weight in ("h/kernel", "h/bias", "out/kernel", "out/bias"):
        assert run.train.steps(f"model/{weight}/histogram") == [0, 1]
    assert run.train.steps("weights/h") == [0, 1]


def test_batch_ends_run_asynchronously_when_nothing_is_written_per_batch():
    # Keras 3 dispatches batch ends asynchronously only while every callback
    # keeps the default on_train_batch_end or says it is async_safe.
    def dispatch(callback):
        callbacks = keras.callbacks.CallbackList([callback], model=keras.Sequential())
        return callbacks._async_train

    assert tbgrad.TensorBoard("unused").async_safe
    assert tbgrad.TensorBoard("unused", write_steps_per_second=True).async_safe
    assert not tbgrad.TensorBoard("unused", update_freq=2).async_safe
    assert not tbgrad.TensorBoard("unused", profile_batch=2).async_safe
    if keras.backend.backend() == "tensorflow" and dispatch(keras.callbacks.Callback()):
        assert dispatch(tbgrad.TensorBoard("unused"))


def test_update_freq_batch_is_every_step_with_steps_per_second(tmp_path):
    _fit(tbgrad.TensorBoard(tmp_path, update_freq="batch", write_steps_per_second=True))
    run = load_run(tmp_path)
    steps = list(range(1, 2 * 4 + 1))  # 64 samples in batches of 16, 2 epochs
    for tag in ("batch_loss", "batch_accuracy", "batch_grad_mean_abs/h"):
        assert run.train.steps(tag) == steps, tag
    assert run.train.steps("batch_steps_per_second") == steps


@pytest.mark.slow
def test_write_images_writes_keras_s_weight_images(tmp_path):
    for name, make in (("ours", tbgrad.TensorBoard), ("keras", keras.callbacks.TensorBoard)):
        _fit(make(tmp_path / name, write_images=True, histogram_freq=2), epochs=3)
    images = {}
    for name in ("ours", "keras"):
        run = load_run(tmp_path / name)
        images[name] = sorted(t for t, p in run.train.plugins.items() if p == "images")
    assert images["ours"] == images["keras"]
    assert images["ours"] == [
        "model/h/bias/image",
        "model/h/kernel/image",
        "model/out/kernel/image",
    ]


def test_embeddings_freq_saves_the_embeddings_as_keras_does(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            keras.layers.Embedding(10, 3, name="embedding"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1, activation="sigmoid", name="out"),
        ]
    )
    model.compile("sgd", "binary_crossentropy")
    x = np.random.default_rng(0).integers(0, 10, size=(32, 4))
    y = (x.sum(axis=1) > 18).astype("float32")
    callback = tbgrad.TensorBoard(tmp_path, embeddings_freq=1, embeddings_metadata="words.tsv")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[callback])
    config = (tmp_path / "projector_config.pbtxt").read_text()
    assert 'metadata_path: "words.tsv"' in config
    assert sorted(p.name for p in (tmp_path / "train").glob("keras_embedding.ckpt-*")) == [
        "keras_embedding.ckpt-0.weights.h5",
        "keras_embedding.ckpt-1.weights.h5",
    ]
    assert load_run(tmp_path).train.steps("grad_mean_abs/out") == [0, 1]


@pytest.mark.slow
def test_profile_batch_writes_a_profile(tmp_path):
    _fit(tbgrad.TensorBoard(tmp_path, profile_batch=(2, 3)))
    assert list((tmp_path / "train" / "plugins" / "profile").rglob("*.xplane.pb"))
    assert load_run(tmp_path).train.steps("grad_mean_abs/h") == [0, 1]


@pytest.mark.slow
def test_keras_tuner_gives_each_trial_its_folder(tmp_path):
    kt = pytest.importorskip("keras_tuner")
    x, y = _data(n=96)

    def build(hp):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(hp.Int("units", 2, 8), activation="tanh", name="h"),
                keras.layers.Dense(1, activation="sigmoid", name="out"),
            ]
        )
        model.compile(keras.optimizers.SGD(hp.Choice("lr", [0.01, 0.1])), "binary_crossentropy")
        return model

    tuner = kt.RandomSearch(
        build, objective="val_loss", max_trials=3, directory=tmp_path / "tuner", seed=1
    )
    logs = tmp_path / "logs"
    tuner.search(
        x,
        y,
        epochs=2,
        validation_data=(x[:32], y[:32]),
        verbose=0,
        callbacks=[tbgrad.TensorBoard(logs)],
    )
    runs = find_runs(logs)
    assert len(runs) == 3
    assert all(run.name == "execution0" for run in runs)
    assert len({run.parent.name for run in runs}) == 3  # one folder per trial
    for path in runs:
        run = load_run(path)
        for tag in tags.layer_tags(LAYERS):
            assert run.train.steps(tag) == [0, 1], (path, tag)
        assert run.train.steps("epoch_loss") == [0, 1]
        # KerasTuner's HParams for the trial, in the run folder itself.
        assert list(path.glob("events.out.tfevents.*")), path


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(profile_batch=-1), "profile_batch must be a non-negative integer"),
        (dict(variables=3), "Received: variables=3"),
        (dict(update_freq="steps"), "Received: update_freq='steps'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tbgrad.TensorBoard("unused", **kwargs)
