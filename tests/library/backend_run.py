"""Trains the backend test's MLP on the Keras backend KERAS_BACKEND names.

Run by tests/library/test_backends.py in a process of its own (Keras picks
its backend once, at import):

    KERAS_BACKEND=jax python backend_run.py WEIGHTS.npz FIT_DIR LOOP_DIR

The model's weights and the data come from WEIGHTS.npz, so that every
backend starts from the same numbers; the learning rate is 0, so the
weights stay put and every step's gradient is that of the same weights.
``FIT_DIR`` gets a ``model.fit`` run with ``tbgrad.TensorBoard``,
``FIT_DIR-moving`` the same with the weights moving (learning rate
:data:`MOVING`), ``FIT_DIR-nonfinite`` one observed step with a NaN and an
Inf in a gradient, ``LOOP_DIR`` a hand-written loop with ``tbgrad.GradientLogger``: JAX's
stateless loop, PyTorch's eager one.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tbgrad  # noqa: E402

BATCH, EPOCHS = 16, 2
# The learning rate of the run whose weights move (its update ratios).
MOVING = 0.05


def build(weights):
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(5, "tanh", name="hidden_1"),
            keras.layers.Dense(5, "relu", name="hidden_2"),
            keras.layers.Dense(1, "sigmoid", name="output"),
        ],
        name="mlp",
    )
    model.set_weights([weights[f"w{i}"] for i in range(6)])
    return model


def fit(weights, log_dir, learning_rate=0.0):
    model = build(weights)
    model.compile(keras.optimizers.SGD(learning_rate, name="sgd"), "binary_crossentropy")
    checkpoint = os.path.join(log_dir, "checkpoint.keras")
    model.fit(
        weights["x"], weights["y"], batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
        callbacks=[
            tbgrad.TensorBoard(log_dir, write_graph=False),
            keras.callbacks.ModelCheckpoint(checkpoint),
        ],
    )  # fmt: skip
    # A checkpoint saved during fit holds Keras's state alone: it loads.
    loaded = keras.saving.load_model(checkpoint)
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)


def batches(weights):
    x, y = weights["x"], weights["y"].reshape(-1, 1)
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]


def jax_loop(weights, log_dir):
    import jax

    model = build(weights)
    optimizer = keras.optimizers.SGD(0.0)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.BinaryCrossentropy()
    logger = tbgrad.GradientLogger(model, log_dir, optimizer=optimizer).attach()

    def loss_and_updates(trainable, non_trainable, x, y):
        pred, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, pred), non_trainable

    grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)

    @jax.jit
    def train_step(state, x, y):
        trainable, non_trainable, optimizer_variables = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, grads, trainable
        )
        return loss, (trainable, non_trainable, optimizer_variables)

    for epoch in range(EPOCHS):
        # The state read after attach(): tbgrad's statistics are part of it.
        state = (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            [v.value for v in optimizer.variables],
        )
        for x, y in batches(weights):
            loss, state = train_step(state, x, y)
        trainable, non_trainable, optimizer_variables = state
        for variables, values in (
            (model.trainable_variables, trainable),
            (model.non_trainable_variables, non_trainable),
            (optimizer.variables, optimizer_variables),
        ):
            for variable, value in zip(variables, values):
                variable.assign(value)
        logger.end_epoch(epoch, {"loss": float(loss)})
    logger.close()


def torch_loop(weights, log_dir):
    import torch

    model = build(weights)
    optimizer = keras.optimizers.SGD(0.0)
    loss_fn = keras.losses.BinaryCrossentropy()
    logger = tbgrad.GradientLogger(model, log_dir, optimizer=optimizer).attach()
    for epoch in range(EPOCHS):
        for x, y in batches(weights):
            model.zero_grad()
            loss = loss_fn(torch.tensor(y), model(torch.tensor(x), training=True))
            loss.backward()
            variables = model.trainable_weights
            optimizer.apply([v.value.grad for v in variables], variables)
        logger.end_epoch(epoch, {"loss": float(loss.detach())})
    logger.close()


def nonfinite(weights, log_dir):
    """One observed step whose first kernel's gradient holds a NaN and an
    Inf: the statistics over its finite entries, and the count."""
    model = build(weights)
    grads = [np.array(w, "float32") for w in model.get_weights()]
    grads[0][0, 0], grads[0][1, 2] = np.nan, np.inf
    with tbgrad.GradientLogger(model, log_dir) as logger:
        logger.observe([keras.ops.convert_to_tensor(g) for g in grads], model.trainable_variables)
        logger.end_epoch(0)


if __name__ == "__main__":
    weights = dict(np.load(sys.argv[1]))
    fit(weights, sys.argv[2])
    fit(weights, sys.argv[2] + "-moving", learning_rate=MOVING)
    nonfinite(weights, sys.argv[2] + "-nonfinite")
    {"jax": jax_loop, "torch": torch_loop}[keras.backend.backend()](weights, sys.argv[3])
