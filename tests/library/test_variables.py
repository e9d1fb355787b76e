"""variables="kernels" | "all" | a predicate: which weights are logged, their
names, and their values against an independent tape."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_mlp

import tbgrad
from tbgrad import tags
from tbgrad.eventlog import load_run
from tbgrad.variables import tracked_variables

EPOCHS = 2
BATCH = 16
LR = 0.1
# Embedding + LSTM: every name variables="all" gives it, in the model's order.
ALL_NAMES = [
    "embedding/embeddings",
    "lstm",
    "lstm/recurrent_kernel",
    "lstm/bias",
    "out",
    "out/bias",
]


def _sequence_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(12, 4, name="embedding"),
            keras.layers.LSTM(3, name="lstm"),
            keras.layers.Dense(1, activation="sigmoid", name="out"),
        ]
    )


def _sequence_data(n=48):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 12, size=(n, 5)).astype("int32")
    return x, (x[:, 0] > 5).astype("float32")


def _reference(model, x, y):
    """Per epoch and variable path: the gradients of every step, from a
    plain tape and ``v -= lr * g`` on a copy of ``model`` (no tbgrad)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    out = []
    for _ in range(EPOCHS):
        seen = {v.path: [] for v in clone.trainable_variables}
        for start in range(0, len(x), BATCH):
            xb, yb = x[start : start + BATCH], y[start : start + BATCH]
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(
                    keras.losses.binary_crossentropy(yb.reshape(-1, 1), clone(xb, training=True))
                )
            grads = tape.gradient(loss, clone.trainable_variables)
            for v, g in zip(clone.trainable_variables, grads):
                g = tf.convert_to_tensor(g)  # the embedding's is IndexedSlices
                seen[v.path].append(g.numpy())
                v.assign(v - LR * g)
        out.append(seen)
    return out


def _train(path, loop, variables):
    model = _sequence_model()
    initial = _sequence_model()
    initial.set_weights(model.get_weights())
    x, y = _sequence_data()
    if loop == "fit":
        model.compile(keras.optimizers.SGD(LR), "binary_crossentropy")
        callback = tbgrad.TensorBoard(path, variables=variables)
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
            optimizer=keras.optimizers.SGD(LR),
            metrics=(),
            log_dir=path,
            verbose=0,
            variables=variables,
        )
    return model, initial, x, y


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_all_variables_of_an_embedding_lstm_model_match_a_tape(tmp_path, loop):
    model, initial, x, y = _train(tmp_path, loop, "all")
    expected = _reference(initial, x, y)
    run = load_run(tmp_path)
    logged = sorted(t.split("/", 1)[1] for t in run.train.plugins if t.startswith("grad_mean_abs/"))
    assert logged == sorted(ALL_NAMES)
    for tracked, reference_var in zip(tracked_variables(model, "all"), initial.trainable_variables):
        name = tracked.name
        grads = [epoch[reference_var.path] for epoch in expected]
        want = [np.mean([np.abs(g).mean() for g in epoch]) for epoch in grads]
        got = run.train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, name))
        np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=name)
        first = run.train.histograms[tags.layer_tag(tags.GRADIENTS, name)][0][1]
        assert first[:, 2].sum() == grads[0][0].size, name
        np.testing.assert_allclose(first[0, 0], grads[0][0].min(), rtol=1e-5, atol=1e-9)
        weights = run.train.scalar(tags.layer_tag(tags.WEIGHT_MEAN, name))
        assert weights[-1] == pytest.approx(tracked.kernel.numpy().mean(), abs=1e-7), name
    assert run.train.steps("grad_mean_abs/lstm/recurrent_kernel") == [0, 1]
    assert run.train.steps("grad_mean_abs/embedding/embeddings") == [0, 1]


def test_kernels_by_default_named_by_the_recurrent_layer(tmp_path):
    _train(tmp_path, "fit", "kernels")
    logged = sorted(
        t.split("/", 1)[1]
        for t in load_run(tmp_path).train.plugins
        if t.startswith("grad_mean_abs/")
    )
    assert logged == ["lstm", "out"]


def test_predicate_selects_variables_and_ratio_stays_on_kernels(tmp_path):
    model = tiny_mlp()
    x = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    model.compile(keras.optimizers.SGD(LR), "binary_crossentropy")
    callback = tbgrad.TensorBoard(tmp_path, variables=lambda v: v.name in ("kernel", "bias"))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    run = load_run(tmp_path)
    names = ["hidden_1", "hidden_1/bias", "hidden_2", "hidden_2/bias", "output", "output/bias"]
    assert (
        sorted(t[len("grad_std/") :] for t in run.train.plugins if t.startswith("grad_std/"))
        == names
    )
    first, last = (
        run.train.scalar("grad_mean_abs/hidden_1"),
        run.train.scalar("grad_mean_abs/output"),
    )
    np.testing.assert_allclose(run.train.scalar("grad_ratio"), first / last, rtol=1e-5)


def test_names_of_common_layers():
    inputs = keras.Input((6, 4))
    h = keras.layers.GRU(3, return_sequences=True, name="gru")(inputs)
    h = keras.layers.Bidirectional(keras.layers.LSTM(2, name="lstm"), name="bi")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    outputs = keras.layers.Dense(1, name="out")(h)
    model = keras.Model(inputs, outputs)
    names = [v.name for v in tracked_variables(model, "all")]
    assert names == [
        "gru",
        "gru/recurrent_kernel",
        "gru/bias",
        "forward_lstm",
        "forward_lstm/recurrent_kernel",
        "forward_lstm/bias",
        "backward_lstm",
        "backward_lstm/recurrent_kernel",
        "backward_lstm/bias",
        "bn/gamma",
        "bn/beta",
        "out",
        "out/bias",
    ]
    kernels = [n for n in names if "/" not in n]
    assert [v.name for v in tracked_variables(model, "kernels")] == kernels
    # The default: every weight matrix (recurrent kernels too; GRU's bias is
    # [2, 3 * units] but a bias, the normalisation's vectors are not).
    matrices = [n for n in names if "/" not in n or n.endswith("recurrent_kernel")]
    assert [v.name for v in tbgrad.tracked_variables(model)] == matrices


def test_names_unique_and_stable_with_repeated_layer_names():
    def block():
        return keras.Sequential(
            [keras.layers.Dense(2, name="d"), keras.layers.LayerNormalization(name="ln")],
            name=None,
        )

    def build():
        inputs = keras.Input((3,))
        a, b = block(), block()
        model = keras.Model(inputs, keras.layers.Concatenate()([a(inputs), b(inputs)]))
        return model, a.name, b.name

    model, a, b = build()
    names = [v.name for v in tracked_variables(model, "all")]
    assert len(set(names)) == len(names)
    assert names[:4] == [f"{a}/d", f"{a}/d/bias", f"{a}/ln/gamma", f"{a}/ln/beta"]
    assert names[4:] == [f"{b}/d", f"{b}/d/bias", f"{b}/ln/gamma", f"{b}/ln/beta"]
    # The same model built again, with the same layer names, names the same.
    again, a2, b2 = build()
    renamed = [
        n.replace(a2, a).replace(b2, b) for n in (v.name for v in tracked_variables(again, "all"))
    ]
    assert renamed == names


def test_multi_head_attention_and_separable_conv_names():
    inputs = keras.Input((5, 8))
    h = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    h = keras.layers.Reshape((5, 8, 1))(h)
    outputs = keras.layers.SeparableConv2D(2, 3, name="sep")(h)
    names = [v.name for v in tracked_variables(keras.Model(inputs, outputs), "all")]
    assert names == [
        "query",
        "query/bias",
        "key",
        "key/bias",
        "value",
        "value/bias",
        "attention_output",
        "attention_output/bias",
        "sep/depthwise_kernel",
        "sep/pointwise_kernel",
        "sep/bias",
    ]
