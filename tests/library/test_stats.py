"""GradientStats on gradients chosen by hand, with and without XLA.

Both forms of the per-layer sums (the tf.cond-guarded float32 one and the
finite-only float64 one that XLA-compiled steps use) must give the numbers a
float64 numpy computation gives, on kernels that share a size but not a shape,
and on gradients with NaN, Inf and entries whose squares overflow float32.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tbgrad.stats import GradientStats, kernel_layers


def _model():
    # Kernels [6, 10] and [10, 6] share their size (stacked together), the
    # output's [6, 1] is alone.
    inputs = keras.Input((6,))
    h = keras.layers.Dense(10, name="a")(inputs)
    h = keras.layers.Dense(6, name="b")(h)
    return keras.Model(inputs, keras.layers.Dense(1, name="out")(h))


def _reference(grad):
    g = np.asarray(grad, np.float64).ravel()
    finite = g[np.isfinite(g)]
    return np.abs(finite).mean(), finite.std(), g.size - finite.size


@pytest.mark.parametrize("jit_compile", [False, True], ids=["no-xla", "xla"])
def test_statistics_match_numpy(jit_compile):
    model = _model()
    layers = kernel_layers(model)
    kernels = [layer.kernel for layer in layers]
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(3):
        steps.append([rng.normal(0, 1e-3, k.shape).astype("float32") for k in kernels])
    steps[1][0][0, :3] = [np.nan, np.inf, -np.inf]  # non-finite entries
    steps[2][1][:] *= 1e22  # squares overflow float32
    stats = GradientStats(layers, jit_compile=jit_compile)
    stats.reset(capture=True)
    update = tf.function(lambda grads: stats.update(grads, kernels), jit_compile=jit_compile)
    for grads in steps:
        update([tf.constant(g) for g in grads])

    got = stats.epoch_stats()
    assert got["steps"] == 3
    for i in range(len(layers)):
        ref = np.array([_reference(step[i]) for step in steps])
        np.testing.assert_allclose(got["grad_mean_abs"][i], ref[:, 0].mean(), rtol=1e-5)
        np.testing.assert_allclose(got["grad_std"][i], ref[:, 1].mean(), rtol=1e-5)
        assert got["grad_nonfinite"][i] == ref[:, 2].sum()
    assert np.isfinite(got["grad_std"]).all()
    # The histogram's copy is the first step's gradients, not a later one's.
    for var, grad in zip(stats.captured_gradients(), steps[0]):
        np.testing.assert_array_equal(var.numpy(), grad)
