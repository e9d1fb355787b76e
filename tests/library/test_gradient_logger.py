"""GradientLogger in your own loop: the README's port of study B's loop, and
the values it logs against the gradients an independent tape computed."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TwoDense, expected_histogram, reference_sgd_gradients, tiny_mlp

import tbgrad
from tbgrad import tags
from tbgrad.eventlog import load_run

README = Path(__file__).resolve().parents[2] / "README.md"
ADDED = "# added"
EPOCHS = 3
BATCH = 32
LAYERS = ["hidden_1", "hidden_2", "output"]


def _readme_loop() -> str:
    text = README.read_text()
    block = re.search(
        r"<!-- own-loop:begin -->\n```python\n(.*?)```\n<!-- own-loop:end -->", text, re.S
    )
    assert block, "README has no <!-- own-loop:begin --> python block"
    return block.group(1)


@pytest.mark.slow
def test_readme_port_of_study_b_adds_three_lines_and_runs(tmp_path, monkeypatch):
    code = _readme_loop()
    added = [line for line in code.splitlines() if line.rstrip().endswith(ADDED)]
    assert len(added) == 3, added
    # Without the added lines it is the plain loop, still valid Python.
    plain = "\n".join(line for line in code.splitlines() if not line.rstrip().endswith(ADDED))
    compile(plain, "plain", "exec")
    assert "tbgrad" not in plain.replace("import keras, tensorflow as tf, tbgrad", "")
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(42)
    exec(compile(code.replace("range(100)", "range(2)"), "README", "exec"), {})
    run = load_run(tmp_path / "logs" / "study-b")
    names = [f"tanh{i}" for i in range(1, 5)] + ["output"]
    for family in (
        *tags.families(kind="histogram"),
        tags.GRAD_MEAN_ABS,
        tags.GRAD_STD,
        tags.WEIGHT_STD,
    ):
        for name in names:
            assert run.train.steps(tags.layer_tag(family, name)) == [0, 1], (family, name)
    assert run.train.steps("epoch_loss") == [0, 1]
    np.testing.assert_allclose(run.train.scalar("epoch_learning_rate"), 0.001)


def _study_b_loop(model, x, y, log_dir, compiled, with_logger=True):
    # Study B's loop: shuffle buffer 1024, batch 32, tape.gradient, then
    # optimizer.apply_gradients; the test keeps what the tape computed.
    optimizer = keras.optimizers.RMSprop()
    loss_fn = keras.losses.BinaryCrossentropy()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(1024, seed=7).batch(BATCH)
    logger = tbgrad.GradientLogger(model, log_dir, optimizer=optimizer).attach()

    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, grads

    step = tf.function(train_step) if compiled else train_step
    seen = []  # per epoch, per step: {variable path: the tape's gradient}
    for epoch in range(EPOCHS):
        seen.append([])
        for xb, yb in dataset:
            loss, grads = step(xb, yb)
            paths = [v.path for v in model.trainable_variables]
            seen[-1].append({p: g.numpy() for p, g in zip(paths, grads)})
        logger.end_epoch(epoch, {"loss": loss})
    logger.close()
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [True, False], ids=["tf.function", "eager"])
def test_own_loop_logs_the_tape_gradients(tmp_path, circles, compiled):
    model = tiny_mlp()
    x, y = circles.x_train[:200], circles.y_train[:200]
    seen = _study_b_loop(model, x, y, tmp_path, compiled)
    run = load_run(tmp_path)
    for layer in LAYERS:
        path = model.get_layer(layer).kernel.path
        want = [np.mean([np.abs(s[path]).mean() for s in epoch]) for epoch in seen]
        got = run.train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, layer))
        np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=layer)
        want_std = [np.mean([s[path].std() for s in epoch]) for epoch in seen]
        got_std = run.train.scalar(tags.layer_tag(tags.GRAD_STD, layer))
        np.testing.assert_allclose(got_std, want_std, rtol=1e-3, err_msg=layer)
        for epoch, (step, hist) in enumerate(run.train.histograms[f"gradients/{layer}"]):
            first = seen[epoch][0][path]
            assert step == epoch
            np.testing.assert_allclose(hist[:, :2], expected_histogram(first)[:, :2], rtol=1e-4)
            assert hist[:, 2].sum() == first.size
        kernel = model.get_layer(layer).kernel.numpy()
        assert run.train.scalar(f"weight_mean/{layer}")[-1] == pytest.approx(
            kernel.mean(), abs=1e-7
        )
    assert run.train.steps("epoch_loss") == list(range(EPOCHS))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


@pytest.mark.slow
def test_observe_without_an_optimizer_matches_a_hand_written_sgd(tmp_path, circles):
    # Gradients applied by hand (no Keras optimizer), passed with observe():
    # compared with conftest's independent SGD loop on the same batches.
    lr = 0.05
    model = tiny_mlp()
    initial = model.get_weights()
    x, y = circles.x_train[:200], circles.y_train[:200]

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            pred = model(xb, training=True)
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(tf.reshape(yb, [-1, 1]), pred))
        grads = tape.gradient(loss, model.trainable_variables)
        logger.observe(grads, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
            v.assign_sub(lr * g)

    with tbgrad.GradientLogger(model, tmp_path, histogram_freq=2) as logger:
        for epoch in range(EPOCHS):
            for start in range(0, len(x), 64):
                step(x[start : start + 64], y[start : start + 64])
            logger.end_epoch(epoch)
    reference = tiny_mlp()
    reference.set_weights(initial)
    expected = reference_sgd_gradients(reference, x, y, 64, EPOCHS, lr)
    run = load_run(tmp_path)
    for layer in LAYERS:
        want = [np.mean([np.abs(g).mean() for g in epoch[layer]]) for epoch in expected]
        np.testing.assert_allclose(run.train.scalar(f"grad_mean_abs/{layer}"), want, rtol=1e-4)
        assert run.train.steps(f"gradients/{layer}") == [0, 2]
    assert "epoch_learning_rate" not in run.train.plugins  # no optimizer, no rate


def test_update_freq_writes_each_nth_step_in_graph(tmp_path, circles):
    model = tiny_mlp()
    optimizer = keras.optimizers.SGD(0.05)
    x, y = circles.x_train[:200], circles.y_train[:200]  # 4 steps per epoch
    logger = tbgrad.GradientLogger(model, tmp_path, update_freq=3, optimizer=optimizer).attach()
    mean_abs = []

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            pred = model(xb, training=True)
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(tf.reshape(yb, [-1, 1]), pred))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return grads

    for epoch in range(2):
        for start in range(0, len(x), 64):
            grads = step(x[start : start + 64], y[start : start + 64])
            mean_abs.append(np.abs(grads[-2].numpy()).mean())  # the output kernel
        logger.end_epoch(epoch)
    logger.close()
    run = load_run(tmp_path)
    assert run.train.steps("batch_grad_mean_abs/output") == [3, 6]
    np.testing.assert_allclose(
        run.train.scalar("batch_grad_mean_abs/output"), [mean_abs[2], mean_abs[5]], rtol=1e-5
    )
    assert run.train.steps("grad_mean_abs/output") == [0, 1]


def test_a_train_step_traced_before_the_logger_is_reported(tmp_path, circles):
    model = tiny_mlp()
    optimizer = keras.optimizers.SGD(0.05)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(yb[:, None], model(xb)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    x, y = circles.x_train[:64], circles.y_train[:64]
    step(x, y)  # traced without the hook
    logger = tbgrad.GradientLogger(model, tmp_path, optimizer=optimizer).attach()
    step(x, y)
    with pytest.warns(UserWarning, match="saw no gradient in epoch 0"):
        logger.end_epoch(0)
    logger.close()
    run = load_run(tmp_path)
    # No applied step seen: no gradient tags rather than zeros; the weights are there.
    assert "grad_mean_abs/output" not in run.train.plugins
    assert run.train.steps("weight_mean/output") == [0]


def test_model_built_by_its_first_step(tmp_path):
    model = TwoDense()
    optimizer = keras.optimizers.SGD(0.1)
    logger = tbgrad.GradientLogger(model, tmp_path, optimizer=optimizer).attach()
    assert not list(tmp_path.iterdir())  # nothing written until the first step builds the model

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb) - yb))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return grads

    xb = np.ones((4, 2), "float32")
    grads = step(xb, np.zeros((4, 1), "float32"))
    logger.end_epoch(0)
    logger.close()
    run = load_run(tmp_path)
    np.testing.assert_allclose(
        run.train.scalar("grad_mean_abs/a"), [np.abs(grads[0].numpy()).mean()], rtol=1e-5
    )
    assert run.train.steps("gradients/b") == [0]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(histogram_freq=-1), ValueError, "Received: histogram_freq=-1"),
        (dict(update_freq="step"), ValueError, "Received: update_freq='step'"),
        (dict(variables="biases"), ValueError, "Received: variables='biases'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        tbgrad.GradientLogger(tiny_mlp(), "unused", **kwargs)
