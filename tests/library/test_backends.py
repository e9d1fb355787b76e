"""JAX and PyTorch: the same tags with the same values as on TensorFlow.

One MLP (tanh, relu, sigmoid), its weights and data from one file, the
learning rate at 0 so every step's gradient is that of the same weights.
Each backend trains it in a process of its own (``backend_run.py``): with
``tbgrad.TensorBoard`` in ``fit`` and with ``GradientLogger`` in a
hand-written loop. Their runs must hold every per-layer tag this process's
TensorFlow run holds, with the same values, and ``grad_mean_abs`` must equal
an independent ``tf.GradientTape`` over the same batches.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tbgrad
from tbgrad import tags

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import backend_run  # noqa: E402

LAYERS = ("hidden_1", "hidden_2", "output")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The weights file, the TensorFlow run and the tape's mean |g| per layer."""
    folder = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(5)
    weights = {
        "w0": rng.normal(size=(2, 5)), "w1": rng.normal(size=5) * 0.1,
        "w2": rng.normal(size=(5, 5)), "w3": rng.normal(size=5) * 0.1,
        "w4": rng.normal(size=(5, 1)), "w5": np.zeros(1),
        "x": rng.normal(size=(64, 2)), "y": (rng.random(64) > 0.5) * 1.0,
    }  # fmt: skip
    weights = {k: v.astype("float32") for k, v in weights.items()}
    np.savez(folder / "weights.npz", **weights)
    backend_run.fit(weights, str(folder / "tensorflow"))
    backend_run.fit(weights, str(folder / "tensorflow-moving"), backend_run.MOVING)
    backend_run.nonfinite(weights, str(folder / "tensorflow-nonfinite"))
    model = backend_run.build(weights)
    per_step = []
    for x, y in backend_run.batches(weights):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(y, model(x, training=True)))
        grads = tape.gradient(loss, [model.get_layer(n).kernel.value for n in LAYERS])
        per_step.append([np.abs(g.numpy()).mean() for g in grads])
    expected = dict(zip(LAYERS, np.mean(per_step, axis=0)))
    names = ("tensorflow", "tensorflow-moving", "tensorflow-nonfinite")
    runs = {name: tbgrad.load_run(folder / name).train for name in names}
    return folder, runs, expected


def _train(backend: str, folder: Path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend)
    script = [sys.executable, str(HERE / "backend_run.py"), str(folder / "weights.npz")]
    fit_dir, loop_dir = folder / f"{backend}-fit", folder / f"{backend}-loop"
    done = subprocess.run(
        [*script, str(fit_dir), str(loop_dir)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    paths = (fit_dir, loop_dir, f"{fit_dir}-moving", f"{fit_dir}-nonfinite")
    read = [tbgrad.load_run(path).train for path in paths]
    return read[:2], read[2], read[3]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_logs_what_tensorflow_logs(backend, reference):
    folder, on_tensorflow, expected = reference
    still, moving, nonfinite = _train(backend, folder)
    for train in still:
        _same_tags(train, on_tensorflow["tensorflow"], rtol=1e-4)
        for layer in LAYERS:
            logged = train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, layer))
            np.testing.assert_allclose(logged, expected[layer], rtol=1e-4, err_msg=layer)
    # The weights moving: the same trajectory, so the same update ratios too.
    _same_tags(moving, on_tensorflow["tensorflow-moving"], rtol=1e-3)
    ratio = moving.scalar(tags.layer_tag(tags.UPDATE_RATIO, "hidden_1"))
    assert (ratio > 0).all()
    # A NaN and an Inf: counted, and the moments over the finite entries.
    _same_tags(nonfinite, on_tensorflow["tensorflow-nonfinite"], rtol=1e-5, at_least=5)
    assert nonfinite.scalar(tags.layer_tag(tags.GRAD_NONFINITE, "hidden_1"))[0] == 2


def _same_tags(train, on_tensorflow, rtol, at_least=30):
    per_layer = sorted(t for t in on_tensorflow.scalars if t.rsplit("/", 1)[-1] in LAYERS)
    # Gradients, norms, weights, ratios, update ratio, activations.
    assert len(per_layer) >= at_least
    for tag in per_layer:
        np.testing.assert_allclose(
            train.scalar(tag), on_tensorflow.scalar(tag), rtol=rtol, atol=1e-6, err_msg=tag
        )
    histograms = {t for t in on_tensorflow.histograms if t.rsplit("/", 1)[-1] in LAYERS}
    assert histograms <= set(train.histograms)
