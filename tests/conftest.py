"""Shared fixtures: tiny real models, real training, real event files."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tbgrad  # noqa: E402

# The six weight matrices of a KerasHub GPT-2 block, in model order (below
# ``transformer_layer_<i>/``).
GPT2_BLOCK_MATRICES = (
    "self_attention/query",
    "self_attention/key",
    "self_attention/value",
    "self_attention/attention_output",
    "feedforward_intermediate_dense",
    "feedforward_output_dense",
)


@pytest.fixture(scope="session")
def circles():
    return tbgrad.lab.load_dataset("circles-a")


class TwoDense(keras.Model):
    """A subclassed model, built only by its first call: Dense ``a`` then ``b``."""

    def __init__(self):
        super().__init__()
        self.a = keras.layers.Dense(3, name="a")
        self.b = keras.layers.Dense(1, name="b")

    def call(self, x):
        return self.b(self.a(x))


def tiny_mlp(seed: int = 3, depth: int = 2, act: str = "tanh", init: str = "glorot_uniform"):
    keras.utils.set_random_seed(seed)
    return tbgrad.lab.build_mlp(depth=depth, width=4, activation=act, init=init)


def reference_sgd_gradients(model, x, y, batch_size, epochs, lr):
    """Trains a copy of ``model`` with a hand-written SGD loop.

    Independent of tbgrad and of Keras's optimizers: plain ``tf.GradientTape``
    and ``w -= lr * g`` on the batches in order. Returns, per epoch and layer
    name, the list of kernel gradients of every step.
    """
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    names = [layer.name for layer in clone.layers if hasattr(layer, "kernel")]
    kernels = [layer.kernel for layer in clone.layers if hasattr(layer, "kernel")]
    out = []
    for _ in range(epochs):
        per_layer = {name: [] for name in names}
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            with tf.GradientTape() as tape:
                pred = clone(xb, training=True)
                loss = tf.reduce_mean(keras.losses.binary_crossentropy(yb.reshape(-1, 1), pred))
            grads = tape.gradient(loss, clone.trainable_variables)
            by_var = {id(v): g for v, g in zip(clone.trainable_variables, grads)}
            for name, kernel in zip(names, kernels):
                per_layer[name].append(by_var[id(kernel)].numpy())
            for v, g in zip(clone.trainable_variables, grads):
                v.assign(v - lr * g)
        out.append(per_layer)
    return out


def expected_histogram(values: np.ndarray, buckets: int = 30) -> np.ndarray:
    """TensorBoard's histogram of ``values``, computed with numpy."""
    values = values.ravel().astype(np.float64)
    lo, hi = values.min(), values.max()
    counts, edges = np.histogram(values, bins=buckets, range=(lo, hi))
    return np.stack([edges[:-1], edges[1:], counts], axis=1)


def _plugin_get(logdir, route, query=""):
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    from tbgrad.dashboard.plugin import GradientFlowPlugin

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    plugin = GradientFlowPlugin(base_plugin.TBContext(logdir=str(logdir), data_provider=provider))
    response = Client(plugin.get_plugin_apps()[route], Response).get(f"{route}?{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


@pytest.fixture
def plugin_get():
    """``plugin_get(logdir, route, query)``: the Gradient-flow plugin's JSON
    answer on its own WSGI route, over TensorBoard's data provider (no
    server, no browser)."""
    return _plugin_get


def update_ratios_by_hand(model, optimizer, kernels, x, y, batch, epochs, loss) -> np.ndarray:
    """``[epochs, steps, kernels]``: ||w_after - w_before|| / ||w_before|| of
    every step of a plain eager loop, the kernels read around
    ``optimizer.apply``; ``loss(y_batch, prediction)``."""
    out = []
    for _ in range(epochs):
        steps = []
        for start in range(0, len(x), batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            with tf.GradientTape() as tape:
                value = loss(yb.reshape(-1, 1), model(xb, training=True))
            grads = tape.gradient(value, model.trainable_variables)
            before = [k.numpy().astype(np.float64) for k in kernels]
            optimizer.apply(grads, model.trainable_variables)
            after = [k.numpy().astype(np.float64) for k in kernels]
            steps.append([np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(after, before)])
        out.append(steps)
    return np.array(out)
