"""``stats_every=N``: the statistics of every N-th step, against an independent tape.

The epoch's ``grad_mean_abs`` and ``grad_std`` must be the averages over the
epoch's steps 0, N, 2N, ... of the gradients a hand-written
``tf.GradientTape`` loop computes (:func:`conftest.reference_sgd_gradients`),
through ``model.fit`` (one step per call and several) and on gradients chosen
by hand, with and without XLA.
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
from tbgrad.stats import GradientStats, kernel_layers

EPOCHS = 2
BATCH = 32
LR = 0.05
N = 200  # 7 steps per epoch: six of 32 samples and one of 8
EVERY = 3  # steps 0, 3 and 6 of each epoch
LAYERS = ["hidden_1", "hidden_2", "output"]


# Under XLA with one step per call, the callback runs a train function
# without the statistics on the steps left out; otherwise the train step
# picks its steps.
@pytest.mark.parametrize(
    "steps_per_execution, jit_compile", [(1, False), (4, False), (1, True), (4, True)]
)
def test_fit_averages_every_nth_step(tmp_path, circles, steps_per_execution, jit_compile):
    x, y = circles.x_train[:N], circles.y_train[:N]
    model = tiny_mlp()
    reference = tiny_mlp()
    reference.set_weights(model.get_weights())
    model.compile(
        keras.optimizers.SGD(LR),
        "binary_crossentropy",
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    callback = tbgrad.GradientTensorBoard(tmp_path, stats_every=EVERY)
    model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[callback])
    expected = reference_sgd_gradients(reference, x, y, BATCH, EPOCHS, LR)
    run = load_run(tmp_path)
    for layer in LAYERS:
        steps = [epoch[layer][::EVERY] for epoch in expected]
        assert [len(s) for s in steps] == [3] * EPOCHS
        want_mean_abs = [np.mean([np.abs(g).mean() for g in s]) for s in steps]
        want_std = [np.mean([g.std() for g in s]) for s in steps]
        got_mean_abs = run.train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, layer))
        got_std = run.train.scalar(tags.layer_tag(tags.GRAD_STD, layer))
        np.testing.assert_allclose(got_mean_abs, want_mean_abs, rtol=1e-5, err_msg=layer)
        np.testing.assert_allclose(got_std, want_std, rtol=1e-5, err_msg=layer)


@pytest.mark.parametrize("steps_per_execution, jit_compile", [(1, False), (4, False), (1, True)])
def test_fit_first_nonfinite_step_counts_the_steps_left_out(
    tmp_path, circles, steps_per_execution, jit_compile
):
    x, y = circles.x_train[:N].copy(), circles.y_train[:N]
    x[100, 0] = np.nan  # in step 3 (samples 96-127), one of those counted
    model = tiny_mlp()
    model.compile(
        keras.optimizers.SGD(LR),
        "binary_crossentropy",
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    callback = tbgrad.TensorBoard(tmp_path, histogram_freq=0, stats_every=EVERY)
    model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[callback])
    assert callback.first_nonfinite == {
        "what": "gradient",
        "layer": "hidden_1",
        "epoch": 0,
        "step_in_epoch": 3,
        "step": 3,
    }
    # The model trains on afterwards without the hook: no train function of
    # the callback's is left behind.
    assert model.train_function is None


@pytest.mark.parametrize("jit_compile", [False, True], ids=["no-xla", "xla"])
def test_every_nth_step_on_chosen_gradients(jit_compile):
    model = tiny_mlp()
    layers = kernel_layers(model)
    kernels = [layer.kernel for layer in layers]
    rng = np.random.default_rng(0)
    steps = [[rng.normal(0, 1e-2, k.shape).astype("float32") for k in kernels] for _ in range(5)]
    steps[1][0][0, 0] = np.nan  # left out: only steps 0, 2 and 4 count
    stats = GradientStats(layers, jit_compile=jit_compile, stats_every=2)
    stats.reset(capture=True)
    update = tf.function(lambda grads: stats.update(grads, kernels), jit_compile=jit_compile)
    for grads in steps:
        update([tf.constant(g) for g in grads])

    got = stats.epoch_stats()
    assert got["steps"] == 3
    for i in range(len(layers)):
        counted = [step[i].astype(np.float64) for step in steps[::2]]
        np.testing.assert_allclose(
            got["grad_mean_abs"][i], np.mean([np.abs(g).mean() for g in counted]), rtol=1e-5
        )
        np.testing.assert_allclose(
            got["grad_std"][i], np.mean([g.std() for g in counted]), rtol=1e-5
        )
        assert got["grad_nonfinite"][i] == 0
    # The histogram's copy is the epoch's first step, always one of those counted.
    for var, grad in zip(stats.captured_gradients(), steps[0]):
        np.testing.assert_array_equal(var.numpy(), grad)
    # A new epoch counts from its own first step again.
    stats.reset(capture=False)
    update([tf.constant(g) for g in steps[1]])
    assert stats.epoch_stats()["steps"] == 1


@pytest.mark.parametrize(
    "value, error", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_bad_stats_every_is_refused_at_construction(value, error):
    with pytest.raises(
        error, match=rf"stats_every must be an int >= 1\. Received: stats_every={value!r}"
    ):
        tbgrad.GradientTensorBoard("logs", stats_every=value)
