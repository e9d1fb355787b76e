"""Glorot & Bengio (2010): back-propagated gradients, standard vs normalized init.

Their finding: with the "standard" initialization W ~ U[-1/sqrt(n), 1/sqrt(n)]
the variance of the back-propagated gradients shrinks from the output layer
towards the input; their normalized ("Glorot") initialization,
W ~ U[-sqrt(6)/sqrt(n_in + n_out), +sqrt(6)/sqrt(n_in + n_out)], keeps it
roughly constant across layers.

:func:`backprop_stds` measures, for every layer of an MLP on a batch, the
standard deviation of the back-propagated gradient dL/dh (h: the layer's
output) and of the kernel gradient dL/dW, with a plain ``tf.GradientTape``.
:func:`flatness` summarizes how much a per-layer profile varies.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# The deep tanh network of the check: deeper and wider than study A's, so the
# per-layer trend is visible above the noise (Glorot & Bengio used 5 hidden
# layers of 1000 units; the two-circles input has 2 features).
CHECK_DEPTH = 8
CHECK_WIDTH = 64
INITS = ("standard", "glorot_uniform")


def backprop_stds(model: keras.Model, x, y) -> dict[str, np.ndarray]:
    """Per layer: std of dL/dh (layer output) and of dL/dW, on ``(x, y)``.

    Returns ``{"layers": names, "activation_grad_std": [...],
    "kernel_grad_std": [...]}`` in input-to-output order, hidden layers and
    the output layer (whose ``activation_grad_std`` is NaN).
    """
    x = tf.convert_to_tensor(np.asarray(x, dtype="float32"))
    y = tf.reshape(tf.convert_to_tensor(np.asarray(y, dtype="float32")), (-1, 1))
    layers = [layer for layer in model.layers if hasattr(layer, "kernel")]
    with tf.GradientTape() as tape:
        h = x
        outputs = []
        for layer in layers:
            # The Dense layer written out, so that every h is a tensor of this
            # tape (a Keras layer call may hand the next layer a copy).
            h = layer.activation(tf.matmul(h, layer.kernel) + layer.bias)
            outputs.append(h)
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(y, h))
    kernels = [layer.kernel for layer in layers]
    grads = tape.gradient(loss, outputs + kernels)
    n = len(layers)
    return {
        "layers": [layer.name for layer in layers],
        # Keras's cross-entropy reads the sigmoid's logits directly, so the
        # output layer's dL/dh is not defined: NaN there.
        "activation_grad_std": np.array(
            [np.nan if g is None else float(tf.math.reduce_std(g)) for g in grads[:n]]
        ),
        "kernel_grad_std": np.array([float(tf.math.reduce_std(g)) for g in grads[n:]]),
    }


def flatness(profile) -> float:
    """max / min of a per-layer profile: 1 is perfectly flat."""
    profile = np.asarray(profile, dtype=float)
    profile = profile[np.isfinite(profile)]
    return float(profile.max() / profile.min())
