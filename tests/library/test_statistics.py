"""Each statistic on gradients, weights and activations chosen by hand,
through the collector's step protocol, against numpy: eagerly, in a traced
step (a step left out is skipped in a branch) and under XLA (computed and
masked). No fit: milliseconds each."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TwoDense

from tbgrad import step as S
from tbgrad import tags
from tbgrad.collector import Collector
from tbgrad.statistics import REGISTRY, Family, Statistic
from tbgrad.statistics.activations import ActivationLayer
from tbgrad.statistics.base import MAX, Setup
from tbgrad.statistics.buckets import histogram_buckets
from tbgrad.statistics.clipping import ClipStats
from tbgrad.statistics.gradients import GradientHistogram, GradientMoments, GradientNorm
from tbgrad.statistics.update_ratio import UpdateRatio
from tbgrad.variables import KernelLayer

MODES = ["eager", "branch", "xla"]


def _collector(kernels, mode, statistics, every=1, diagnostics_every=1, **setup):
    layers = tuple(KernelLayer(f"k{i}", k) for i, k in enumerate(kernels))
    policy = S.ExecutionPolicy.for_mode(jit_compile=mode == "xla")
    return Collector(Setup(layers, **setup), policy, every, diagnostics_every, statistics)


def _stepper(collector, kernels, mode):
    # One train step as the optimizer hook calls it: the gradients before
    # clipping, the gradients applied, the weights moved, the step's end.
    def step(grads, moves):
        collector.begin_update(grads)
        collector.update(grads, kernels)
        for kernel, move in zip(kernels, moves):
            kernel.assign_add(move)
        collector.end_update()

    if mode == "eager":
        return step
    return tf.function(step, jit_compile=mode == "xla")


def _grads(rng, shapes, steps):
    return [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(steps)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("every", [1, 2])
def test_gradient_moments_and_norms_against_numpy(mode, every):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4, 1)]
    kernels = [keras.Variable(np.zeros(s, "float32")) for s in shapes]
    grads = _grads(rng, shapes, 5)
    grads[3][0][1, 2] = np.nan  # a non-finite entry in step 3
    stats = (GradientMoments, GradientNorm)
    collector = _collector(kernels, mode, stats, every=every)
    step = _stepper(collector, kernels, mode)
    for g in grads:
        step([tf.constant(x) for x in g], [np.zeros(s, "float32") for s in shapes])
    epoch = collector.epoch(histograms=False)
    counted = grads[::every]
    for i in range(len(shapes)):
        finite = [x[i][np.isfinite(x[i])] for x in counted]
        np.testing.assert_allclose(
            epoch.values[f"grad_mean_abs/k{i}"], np.mean([np.abs(f).mean() for f in finite]), 1e-5
        )
        np.testing.assert_allclose(
            epoch.values[f"grad_std/k{i}"], np.mean([f.std() for f in finite]), 1e-4
        )
        norms = [np.linalg.norm(f) for f in finite]
        np.testing.assert_allclose(epoch.values[f"grad_norm/k{i}"], np.mean(norms), 1e-5)
        np.testing.assert_allclose(epoch.values[f"grad_norm_max/k{i}"], np.max(norms), 1e-5)
        peak = max(np.abs(f).mean() for f in finite)
        np.testing.assert_allclose(epoch.values[f"grad_mean_abs_max/k{i}"], peak, 1e-5)
    total = [np.sqrt(sum(np.sum(x[np.isfinite(x)] ** 2) for x in g)) for g in counted]
    np.testing.assert_allclose(epoch.values[tags.GRAD_GLOBAL_NORM], np.mean(total), 1e-5)
    nonfinite = 1.0 if 3 % every == 0 else 0.0
    assert epoch.values["grad_nonfinite/k0"] == nonfinite
    assert epoch.seen == 5
    if nonfinite:
        assert epoch.first_nonfinite == {"what": "gradient", "layer": "k0", "step": 3}


@pytest.mark.parametrize("mode", MODES)
def test_gradient_histogram_is_the_epochs_first_step(mode):
    rng = np.random.default_rng(1)
    kernels = [keras.Variable(np.zeros((5, 6), "float32"))]
    grads = _grads(rng, [(5, 6)], 3)
    collector = _collector(kernels, mode, (GradientHistogram,))
    step = _stepper(collector, kernels, mode)
    for g in grads:
        step([tf.constant(g[0])], [np.zeros((5, 6), "float32")])
    got = collector.epoch(histograms=True).values["gradients/k0"]
    np.testing.assert_array_equal(got, histogram_buckets(grads[0][0], 30))
    collector.reset(capture=False)
    step([tf.constant(grads[1][0])], [np.zeros((5, 6), "float32")])
    assert collector.epoch(histograms=False).values == {}


@pytest.mark.parametrize("mode", MODES)
def test_update_ratio_of_huge_zero_and_nan_weights(mode):
    # Weights near 1e37 square past float32; a zero kernel that moves has
    # ratio inf; a weight turned NaN gives NaN and is reported.
    start = [np.full((3, 2), 1e37), np.zeros((2, 2)), np.ones(4)]
    moves = [np.full((3, 2), 1e36), np.ones((2, 2)), np.full(4, np.nan)]
    kernels = [keras.Variable(w.astype("float32")) for w in start]
    collector = _collector(kernels, mode, (UpdateRatio,))
    _stepper(collector, kernels, mode)(
        [tf.zeros_like(k) for k in kernels], [m.astype("float32") for m in moves]
    )
    epoch = collector.epoch(histograms=False)
    np.testing.assert_allclose(epoch.values["update_ratio/k0"], 0.1, rtol=1e-5)
    assert epoch.values["update_ratio/k1"] == np.inf
    assert np.isnan(epoch.values["update_ratio/k2"])
    assert epoch.first_nonfinite == {"what": "weight", "layer": "k2", "step": 0}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [1.0, 1e-18])
def test_update_ratio_of_ordinary_and_tiny_weights(mode, scale):
    # Weights near 1 take every norm in one pass; near 1e-18 their squares
    # flush to zero in float32, and every norm is taken scaled instead.
    rng = np.random.default_rng(3)
    start = [(rng.normal(size=s) * scale).astype("float32") for s in [(5, 4), (3,)]]
    moves = [(rng.normal(size=w.shape) * scale * 1e-3).astype("float32") for w in start]
    kernels = [keras.Variable(w) for w in start]
    collector = _collector(kernels, mode, (UpdateRatio,))
    _stepper(collector, kernels, mode)([tf.zeros_like(k) for k in kernels], moves)
    values = collector.epoch(histograms=False).values
    for i, (w, m) in enumerate(zip(start, moves)):
        delta = ((w + m) - w).astype(np.float64)  # the move float32 weights made
        expected = np.linalg.norm(delta) / np.linalg.norm(w.astype(np.float64))
        np.testing.assert_allclose(values[f"update_ratio/k{i}"], expected, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_update_ratio_and_clipping_on_the_diagnostics_steps_only(mode):
    rng = np.random.default_rng(2)
    kernels = [keras.Variable(np.ones((4, 3), "float32"))]
    moves = [rng.normal(size=(4, 3)).astype("float32") * 0.1 for _ in range(4)]
    grads = [rng.normal(size=(4, 3)).astype("float32") * s for s in (1.0, 0.01, 0.01, 0.01)]
    limits = {"clipnorm": None, "clipvalue": 0.5, "global_clipnorm": None}
    stats = (UpdateRatio, ClipStats)
    collector = _collector(kernels, mode, stats, diagnostics_every=2, clip_limits=limits)
    step = _stepper(collector, kernels, mode)
    weights, ratios = np.ones((4, 3)), []
    for i, (g, m) in enumerate(zip(grads, moves)):
        if i % 2 == 0:
            ratios.append(np.linalg.norm(m) / np.linalg.norm(weights))
        weights = weights + m
        step([tf.constant(g)], [m])
    values = collector.epoch(histograms=False).values
    np.testing.assert_allclose(values["update_ratio/k0"], np.mean(ratios), rtol=1e-5)
    # Steps 0 and 2: the first has an entry above clipvalue, the other not.
    assert values[tags.CLIP_SHARE] == 0.5
    norms = [np.linalg.norm(grads[0]), np.linalg.norm(grads[2])]
    np.testing.assert_allclose(values[tags.CLIP_NORM_BEFORE], np.mean(norms), rtol=1e-5)
    np.testing.assert_allclose(values[tags.CLIP_NORM_BEFORE_MAX], max(norms), rtol=1e-5)


@pytest.mark.parametrize("mode", ["branch", "xla"])
def test_activation_health_dead_units_are_decided_per_epoch(mode):
    from tbgrad.statistics.activations import ActivationHealth

    # A relu layer whose outputs are its inputs (identity kernel, no bias).
    layer = keras.layers.Dense(3, "relu", use_bias=False, kernel_initializer="identity")
    layer.build((None, 3))
    kernels = [layer.kernel]
    watched = (ActivationLayer("k0", layer, "relu", 3),)
    collector = _collector(kernels, mode, (ActivationHealth,), activations=watched)
    collector.attach()  # the tap on the layer's activation

    def step(x):
        layer(x, training=True)  # the training forward pass
        collector.update([tf.zeros((3, 3))], kernels)
        collector.end_update()

    run = tf.function(step, jit_compile=mode == "xla")
    run(tf.constant([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
    values = collector.epoch(histograms=False).values
    np.testing.assert_allclose(values["activation_zero/k0"], 4 / 6)
    np.testing.assert_allclose(values["activation_dead/k0"], 1 / 3)
    collector.reset()
    run(tf.constant([[0.0, 0.0, 0.0], [0.0, 3.0, 0.0]]))  # unit 0 died in epoch 1
    values = collector.epoch(histograms=False).values
    np.testing.assert_allclose(values["activation_dead/k0"], 2 / 3)
    collector.detach()
    assert layer.activation is keras.activations.relu


@pytest.mark.parametrize("mode", ["branch", "xla"])
@pytest.mark.parametrize("case", ["ordinary", "nan", "constant"])
def test_activation_histogram_against_numpy(mode, case):
    from tbgrad.statistics.activations import ActivationHistogram

    # Outputs tanh of the inputs (identity kernel): the histogram op
    # without XLA, the full form under XLA, and the full form where an
    # output is NaN or all are equal.
    layer = keras.layers.Dense(4, "tanh", use_bias=False, kernel_initializer="identity")
    layer.build((None, 4))
    watched = (ActivationLayer("k0", layer, "tanh", 4),)
    collector = _collector([layer.kernel], mode, (ActivationHistogram,), activations=watched)
    collector.attach()
    x = np.random.default_rng(4).normal(size=(50, 4)).astype("float32")
    if case == "nan":
        x[3, 1] = np.nan
    if case == "constant":
        x[:] = 0.5

    def step(x):
        layer(x, training=True)
        collector.update([tf.zeros((4, 4))], [layer.kernel])
        collector.end_update()

    tf.function(step, jit_compile=mode == "xla")(tf.constant(x))
    got = collector.epoch(histograms=True).values["activations/k0"]
    collector.detach()
    outputs = np.asarray(layer(tf.constant(x)))  # TensorFlow's tanh
    want = histogram_buckets(outputs)
    np.testing.assert_allclose(got[:, :2], want[:, :2], rtol=1e-6)
    # An entry on a bucket's edge may fall on either side in float32.
    assert got[:, 2].sum() == want[:, 2].sum() == np.isfinite(outputs).sum()
    np.testing.assert_allclose(got[:, 2], want[:, 2], atol=1)


class GradientMax(Statistic):
    """A statistic of one's own: the largest |g| of each layer in the epoch."""

    families = (Family("grad_abs_max", "the largest \\|g\\| of the epoch"),)

    def __init__(self, setup):
        super().__init__(setup)
        self.add_state("peak", [len(setup.layers)], combine=MAX)

    def update(self, step, carry=None):
        return {"peak": keras.ops.stack([keras.ops.max(keras.ops.abs(g)) for g in step.gradients])}

    def result(self, values, epoch):
        return epoch.per_layer("grad_abs_max", values["peak"])


def test_a_statistic_of_ones_own_is_one_class(tmp_path):
    import tbgrad
    from tbgrad.eventlog import load_run

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="out")])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x, y = np.ones((8, 2), "float32"), np.zeros((8, 1), "float32")
    callback = tbgrad.TensorBoard(tmp_path, statistics=(*REGISTRY, GradientMax))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - y))
    want = np.abs(tape.gradient(loss, model.get_layer("out").kernel).numpy()).max()
    np.testing.assert_allclose(load_run(tmp_path).train.scalar("grad_abs_max/out"), [want], 1e-6)


def test_the_tape_loop_takes_gradients_of_unknown_static_shape(tmp_path):
    # A Dense layer on a sequence: inside the compiled epoch its gradient's
    # static shape is unknown; the sizes come from the variables.
    import tbgrad
    from tbgrad.eventlog import load_run

    model = keras.Sequential(
        [
            keras.Input((8, 4)),
            keras.layers.Dense(5, name="d"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1, "sigmoid", name="out"),
        ]
    )
    x = np.random.default_rng(0).normal(size=(16, 8, 4)).astype("float32")
    y = (x[:, 0, :1] > 0).astype("float32")
    tbgrad.train_with_tape(model, x, y, batch_size=8, log_dir=tmp_path, verbose=0)
    assert load_run(tmp_path).train.scalar("grad_norm/d")[0] > 0


def test_a_model_built_in_its_first_step_writes_its_layers_once(tmp_path):
    # A subclassed model is built inside fit's first trace, where the
    # statistics are made: the run's layer order is still written eagerly,
    # once, not by every train step.
    from tensorboard.backend.event_processing import event_file_loader

    import tbgrad
    from tbgrad.dashboard import metadata

    model = TwoDense()
    model.compile("sgd", "mse")
    x = np.ones((32, 2), "float32")
    model.fit(
        x, x[:, :1], batch_size=8, epochs=1, verbose=0, callbacks=[tbgrad.TensorBoard(tmp_path)]
    )
    written = [
        value.tag
        for path in (tmp_path / "train").iterdir()
        for event in event_file_loader.EventFileLoader(str(path)).Load()
        for value in event.summary.value
    ]
    assert written.count(metadata.LAYERS_TAG) == 1


@pytest.mark.parametrize("mode", ["eager", "branch"])
def test_a_step_without_a_tracked_gradient_is_not_counted(mode):
    kernels = [keras.Variable(np.zeros((2, 2), "float32"))]
    other = keras.Variable(np.zeros((3,), "float32"))
    collector = _collector(kernels, mode, (GradientMoments,), every=2)

    def step(tracked):
        collector.begin_update([tf.ones((2, 2))] if tracked else [tf.ones((3,))])
        if tracked:
            collector.update([tf.ones((2, 2))], kernels)
        else:
            collector.update([tf.ones((3,))], [other])  # e.g. another model's step
        collector.end_update()

    run = step if mode == "eager" else tf.function(step, reduce_retracing=True)
    for tracked in (True, False, True, False, True):
        run(tracked)
    epoch = collector.epoch(histograms=False)
    assert epoch.seen == 3  # only the steps with the kernel's gradient
    np.testing.assert_allclose(epoch.values["grad_mean_abs/k0"], 1.0)
