"""Activation health, spikes, clipping and the first NaN, against numpy.

Real training through ``fit``, the tape loop and the tape loop under XLA,
the event files read back with TensorBoard's reader. With a learning rate of
0 the weights never move, so every training step's layer outputs and
gradients can be recomputed independently (a feature model and a plain
``tf.GradientTape``) and the logged epoch values checked against numpy.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import reference_sgd_gradients, tiny_mlp

import tbgrad
from tbgrad import tags
from tbgrad.eventlog import load_run
from tbgrad.statistics.buckets import histogram_buckets

BATCH, EPOCHS, N = 16, 2, 56  # 4 steps an epoch, the last one of 8 samples
LOOPS = ["fit", "tape", "tape+xla"]
ACTIVATIONS = {"t": "tanh", "r": "relu", "out": "sigmoid"}


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 2)).astype("float32")
    return x, (x[:, :1] > 0).astype("float32")


def health_model():
    # t saturates (RandomUniform(0, 2) weights), two of r's four units are
    # dead (bias -100), the sigmoid output is not saturated.
    keras.utils.set_random_seed(5)
    return keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(
                6, "tanh", name="t", kernel_initializer=keras.initializers.RandomUniform(0, 2)
            ),
            keras.layers.Dense(
                4,
                "relu",
                name="r",
                bias_initializer=keras.initializers.Constant([-100.0, 0.0, 0.0, -100.0]),
            ),
            keras.layers.Dense(1, "sigmoid", name="out"),
        ]
    )


def train(model, path, loop, optimizer, x, y, **kwargs):
    # Every step measured, to compare with the per-step references below
    # (the default samples the diagnostics: test_diagnostics_are_sampled).
    kwargs.setdefault("diagnostics_every", 1)
    if loop == "fit":
        model.compile(optimizer, "binary_crossentropy")
        callback = tbgrad.TensorBoard(path, **kwargs)
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            shuffle=False,
            verbose=0,
            validation_data=(x[:8] * 10, y[:8]),
            callbacks=[callback],
        )
        return callback.first_nonfinite
    tbgrad.train_with_tape(
        model,
        x,
        y,
        epochs=EPOCHS,
        batch_size=BATCH,
        optimizer=optimizer,
        log_dir=path,
        shuffle=False,
        verbose=0,
        jit_compile=loop == "tape+xla",
        validation_data=(x[:8] * 10, y[:8]),
        **kwargs,
    )
    return None


def expected_health(model, x):
    # Per training step (the batches in order), from a feature model.
    names = list(ACTIVATIONS)
    features = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    shares = {n: [] for n in names}
    alive = np.zeros(4, bool)
    first = None
    for start in range(0, N, BATCH):
        outputs = dict(zip(names, (np.asarray(a) for a in features(x[start : start + BATCH]))))
        first = first or outputs
        shares["t"].append(np.mean(np.abs(outputs["t"]) > 0.97))
        shares["r"].append(np.mean(outputs["r"] == 0))
        out = outputs["out"]
        shares["out"].append(np.mean((out < 0.03) | (out > 0.97)))
        alive |= (outputs["r"] > 0).any(axis=0)
    return {n: float(np.mean(v)) for n, v in shares.items()}, 1 - alive.mean(), first


def test_diagnostics_are_sampled_by_default(tmp_path):
    # The default measures the epoch's first step and every 16th after it:
    # with fewer steps than that, the epoch's shares are its first step's.
    x, y = data()
    model = health_model()
    train(model, tmp_path, "fit", keras.optimizers.SGD(0.0), x, y, diagnostics_every=16)
    names = list(ACTIVATIONS)
    features = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    first = dict(zip(names, (np.asarray(a) for a in features(x[:BATCH]))))
    run = load_run(tmp_path).train
    want = np.mean(np.abs(first["t"]) > 0.97)
    assert want != expected_health(model, x)[0]["t"]  # the sample differs from the mean
    np.testing.assert_allclose(run.scalar("activation_saturated/t"), [want] * EPOCHS)


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_saturated_zero_and_dead_shares_and_histograms_equal_numpy(tmp_path, loop):
    x, y = data()
    model = health_model()
    train(model, tmp_path, loop, keras.optimizers.SGD(0.0), x, y)
    shares, dead, first = expected_health(model, x)
    assert shares["t"] > 0.1 and 0 < shares["r"] < 1  # the model does what it should
    run = load_run(tmp_path).train
    scalar = lambda family, layer: run.scalar(tags.layer_tag(family, layer))  # noqa: E731
    np.testing.assert_allclose(scalar(tags.ACTIVATION_SATURATED, "t"), [shares["t"]] * EPOCHS)
    np.testing.assert_allclose(scalar(tags.ACTIVATION_SATURATED, "out"), [shares["out"]] * EPOCHS)
    np.testing.assert_allclose(scalar(tags.ACTIVATION_ZERO, "r"), [shares["r"]] * EPOCHS)
    np.testing.assert_allclose(scalar(tags.ACTIVATION_DEAD, "r"), [dead] * EPOCHS)
    assert dead == 0.5
    # Only the families of each layer's activation, and the histograms.
    assert tags.layer_tag(tags.ACTIVATION_DEAD, "t") not in run.scalars
    assert tags.layer_tag(tags.ACTIVATION_SATURATED, "r") not in run.scalars
    for name, outputs in first.items():
        logged = run.histograms[tags.layer_tag(tags.ACTIVATIONS, name)]
        assert [step for step, _ in logged] == list(range(EPOCHS))
        want = histogram_buckets(outputs)
        np.testing.assert_allclose(logged[0][1][:, :2], want[:, :2], rtol=1e-6, atol=1e-6)
        assert logged[0][1][:, 2].sum() == want[:, 2].sum() == outputs.size
        np.testing.assert_allclose(logged[0][1][:, 2], want[:, 2], atol=1)
    # The layers' activations are restored.
    for name in ACTIVATIONS:
        activation = model.get_layer(name).activation
        assert activation is getattr(keras.activations, ACTIVATIONS[name])


@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_diagnostics_false_logs_gradients_and_weights_only(tmp_path, loop):
    x, y = data()
    model = health_model()
    train(model, tmp_path, loop, keras.optimizers.SGD(0.01, clipnorm=0.5), x, y, diagnostics=False)
    run = load_run(tmp_path).train
    families = {tag.split("/")[0] for tag in run.scalars if "/" in tag}
    assert families == set(tags.families(kind="scalar", per_layer=True)) - {tags.UPDATE_RATIO}
    assert not [tag for tag in run.histograms if tag.startswith(tags.ACTIVATIONS + "/")]
    assert model.get_layer("t").activation is keras.activations.tanh


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_grad_mean_abs_max_is_the_largest_step(tmp_path, loop):
    x, y = data()
    model = tiny_mlp()
    initial = model.get_weights()
    train(model, tmp_path, loop, keras.optimizers.SGD(0.1), x, y)
    reference = tiny_mlp()
    reference.set_weights(initial)
    expected = reference_sgd_gradients(reference, x, y, BATCH, EPOCHS, 0.1)
    run = load_run(tmp_path).train
    for name in ("hidden_1", "hidden_2", "output"):
        peaks = [max(np.abs(g).mean() for g in expected[e][name]) for e in range(EPOCHS)]
        means = run.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, name))
        logged = run.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS_MAX, name))
        np.testing.assert_allclose(logged, peaks, rtol=1e-4)
        assert (logged >= means).all()


def test_clip_share_and_norm_before_clipping(tmp_path):
    x, y = data()
    model = health_model()
    # Each step's gradients of every variable, before clipping (lr 0: the
    # weights never move).
    norms = []
    for start in range(0, N, BATCH):
        with tf.GradientTape() as tape:
            pred = model(x[start : start + BATCH], training=True)
            loss = keras.losses.binary_crossentropy(y[start : start + BATCH], pred)
            loss = tf.reduce_mean(loss)
        grads = tape.gradient(loss, model.trainable_variables)
        norms.append([float(tf.norm(g)) for g in grads])
    norms = np.array(norms)
    clipnorm = float(np.median(norms.max(axis=1)))
    model.compile(keras.optimizers.SGD(0.0, clipnorm=clipnorm), "binary_crossentropy")
    callback = tbgrad.TensorBoard(tmp_path, diagnostics_every=1)
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[callback])
    run = load_run(tmp_path).train
    share = np.mean((norms > clipnorm).any(axis=1))
    assert 0 < share < 1
    global_norms = np.sqrt((norms**2).sum(axis=1))
    np.testing.assert_allclose(run.scalar(tags.CLIP_SHARE), [share] * EPOCHS)
    np.testing.assert_allclose(
        run.scalar(tags.CLIP_NORM_BEFORE), [global_norms.mean()] * EPOCHS, rtol=1e-4
    )
    np.testing.assert_allclose(
        run.scalar(tags.CLIP_NORM_BEFORE_MAX), [global_norms.max()] * EPOCHS, rtol=1e-4
    )


def test_no_clip_tags_without_clipping(tmp_path):
    x, y = data()
    model = health_model()
    train(model, tmp_path, "fit", keras.optimizers.SGD(0.01), x, y)
    assert not [t for t in load_run(tmp_path).train.scalars if t.startswith("clip/")]


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_first_nonfinite_gradient_step_and_layer(tmp_path, loop):
    x, y = data()
    x[40, 0] = np.nan  # batch 2 of every epoch (shuffle off)
    model = tiny_mlp()
    first = train(model, tmp_path, loop, keras.optimizers.SGD(0.01), x, y)
    expected = {"what": "gradient", "layer": "hidden_1", "epoch": 0, "step_in_epoch": 2, "step": 2}
    if loop == "fit":
        assert first == expected
    text = _texts(tmp_path / "train")
    assert text == {
        0: "hidden_1 gradient turned NaN or Inf at step 2 (epoch 0, step 2 of the epoch)"
    }


def test_first_nonfinite_weight_from_an_overflowing_update(tmp_path):
    # Finite gradients, an update so large that the weights overflow to Inf.
    x, y = data()
    model = tiny_mlp()
    first = train(model, tmp_path, "fit", keras.optimizers.SGD(1e39), x, y)
    assert not np.isfinite(model.get_layer("hidden_1").kernel.numpy()).all()
    assert first["what"] == "weight" and first["step"] == 0 and first["epoch"] == 0
    assert first["layer"] in ("hidden_1", "hidden_2", "output")


def _texts(folder) -> dict[int, str]:
    from tensorboard.backend.event_processing import event_file_loader

    out = {}
    for path in sorted(folder.iterdir()):
        for event in event_file_loader.EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == tags.FIRST_NONFINITE:
                    out[event.step] = value.tensor.string_val[0].decode()
    return out


def test_conv_outputs_are_counted_per_channel(tmp_path):
    # A rank-4 output takes the layer-by-layer path: a unit is a channel.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 5, 5, 1)).astype("float32")
    y = (x[:, 0, 0, :] > 0).astype("float32")
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((5, 5, 1)),
            keras.layers.Conv2D(
                3,
                3,
                activation="relu",
                name="conv",
                bias_initializer=keras.initializers.Constant([0.0, -100.0, 0.0]),
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(1, "sigmoid", name="out"),
        ]
    )
    model.compile(keras.optimizers.SGD(0.0), "binary_crossentropy")
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[tbgrad.TensorBoard(tmp_path, diagnostics_every=1)],
    )
    conv = keras.Model(model.inputs, model.get_layer("conv").output)
    outputs = [np.asarray(conv(x[s : s + BATCH])) for s in range(0, N, BATCH)]
    zero = np.mean([np.mean(a == 0) for a in outputs])
    alive = np.any([(a > 0).any(axis=(0, 1, 2)) for a in outputs], axis=0)
    run = load_run(tmp_path).train
    np.testing.assert_allclose(run.scalar(tags.layer_tag(tags.ACTIVATION_ZERO, "conv")), [zero])
    np.testing.assert_allclose(
        run.scalar(tags.layer_tag(tags.ACTIVATION_DEAD, "conv")), [1 - alive.mean()]
    )
    assert 1 - alive.mean() == pytest.approx(1 / 3)


def test_own_loop_logs_activation_health(tmp_path):
    # GradientLogger in a hand-written tf.function loop: the wrapped
    # activations' outputs reach the optimizer's step in the same trace.
    x, y = data()
    model = health_model()
    optimizer = keras.optimizers.SGD(0.0)
    loss_fn = keras.losses.BinaryCrossentropy()
    logger = tbgrad.GradientLogger(
        model, tmp_path, optimizer=optimizer, diagnostics_every=1
    ).attach()

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for epoch in range(EPOCHS):
        for start in range(0, N, BATCH):
            loss = train_step(x[start : start + BATCH], y[start : start + BATCH])
        model(x[:8] * 10, training=False)  # an evaluation pass: not counted
        logger.end_epoch(epoch, {"loss": loss})
    logger.close()
    shares, dead, _ = expected_health(model, x)
    run = load_run(tmp_path).train
    np.testing.assert_allclose(
        run.scalar(tags.layer_tag(tags.ACTIVATION_SATURATED, "t")), [shares["t"]] * EPOCHS
    )
    np.testing.assert_allclose(run.scalar(tags.layer_tag(tags.ACTIVATION_DEAD, "r")), [dead] * 2)
    assert model.get_layer("t").activation is keras.activations.tanh


def _activation_tags(path) -> set[str]:
    return {t for t in load_run(path).train.scalars if t.startswith("activation_")}


@pytest.mark.slow
def test_activation_health_with_a_loss_scale_optimizer_and_accumulation(tmp_path):
    # Both run the optimizer's update step inside a cond branch. With
    # gradient accumulation the statistics count the steps that apply the
    # gradients (the 2nd and 4th of the epoch), as the gradient tags do.
    x, y = data()
    for name, optimizer, counted in [
        (
            "loss-scale",
            keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.0)),
            [0, 1, 2, 3],
        ),
        ("accumulate", keras.optimizers.SGD(0.0, gradient_accumulation_steps=2), [1, 3]),
    ]:
        model = health_model()
        model.compile(optimizer, "binary_crossentropy")
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[tbgrad.TensorBoard(tmp_path / name, diagnostics_every=1)],
        )
        features = keras.Model(model.inputs, model.get_layer("t").output)
        per_step = [
            np.mean(np.abs(np.asarray(features(x[s : s + BATCH]))) > 0.97)
            for s in range(0, N, BATCH)
        ]
        run = load_run(tmp_path / name).train
        saturated = run.scalar(tags.layer_tag(tags.ACTIVATION_SATURATED, "t"))
        np.testing.assert_allclose(
            saturated, [np.mean([per_step[i] for i in counted])], err_msg=name
        )


@pytest.mark.slow
def test_recurrent_and_transposed_layers_never_break_fit(tmp_path):
    # An LSTM applies its activation inside a loop: not watched; the Dense
    # after it is. A transposed convolution's units are its filters.
    rng = np.random.default_rng(0)
    for i, unroll in enumerate([False, True]):
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [
                keras.Input((3, 2)),
                keras.layers.LSTM(4, unroll=unroll, name="lstm"),
                keras.layers.Dense(5, "relu", name="d"),
                keras.layers.Dense(1, "sigmoid", name="out"),
            ]
        )
        model.compile("sgd", "binary_crossentropy")
        x = rng.normal(size=(16, 3, 2)).astype("float32")
        model.fit(
            x,
            np.ones((16, 1)),
            epochs=1,
            verbose=0,
            callbacks=[tbgrad.TensorBoard(tmp_path / f"lstm{i}", diagnostics_every=1)],
        )
        assert _activation_tags(tmp_path / f"lstm{i}") == {
            "activation_zero/d",
            "activation_dead/d",
            "activation_saturated/out",
        }
    model = keras.Sequential(
        [
            keras.Input((4, 4, 7)),
            keras.layers.Conv2DTranspose(2, 3, activation="relu", name="up"),
            keras.layers.Flatten(),
            keras.layers.Dense(1, "sigmoid", name="out"),
        ]
    )
    model.compile("sgd", "binary_crossentropy")
    x = rng.normal(size=(8, 4, 4, 7)).astype("float32")
    model.fit(
        x,
        np.ones((8, 1)),
        epochs=1,
        verbose=0,
        callbacks=[tbgrad.TensorBoard(tmp_path / "t", diagnostics_every=1)],
    )
    assert "activation_dead/up" in _activation_tags(tmp_path / "t")


def test_a_fit_stopped_by_an_exception_leaves_the_next_callback_whole(tmp_path):
    x, y = data()
    model = health_model()
    model.compile(keras.optimizers.SGD(0.0), "binary_crossentropy")

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=1,
            verbose=0,
            callbacks=[tbgrad.TensorBoard(tmp_path / "a", diagnostics_every=1), Stop()],
        )
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[tbgrad.TensorBoard(tmp_path / "b", diagnostics_every=1)],
    )
    shares, _, _ = expected_health(model, x)
    saturated = load_run(tmp_path / "b").train.scalar(
        tags.layer_tag(tags.ACTIVATION_SATURATED, "t")
    )
    np.testing.assert_allclose(saturated, [shares["t"]])


def test_weights_too_large_for_float32_squares_are_not_called_non_finite(tmp_path):
    # SGD(3e38) moves the weights to about 1e37: finite, though their
    # squares overflow float32. The step is redone in float64.
    x, y = data()
    model = tiny_mlp()
    before = model.get_layer("hidden_1").kernel.numpy().astype(np.float64)
    first = train(model, tmp_path, "fit", keras.optimizers.SGD(3e38), x, y)
    kernels = [model.get_layer(n).kernel.numpy() for n in ("hidden_1", "hidden_2", "output")]
    ratio = load_run(tmp_path).train.scalar(tags.layer_tag(tags.UPDATE_RATIO, "hidden_1"))
    if all(np.isfinite(k).all() for k in kernels):
        assert first is None
        assert np.isfinite(ratio).all() and ratio[0] > 1e30
    else:
        assert first["what"] == "weight"
    assert np.isfinite(before).all()
