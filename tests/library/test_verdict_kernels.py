"""With variables="all" the verdict still compares the layers' kernels only."""

from __future__ import annotations

import keras
import numpy as np

import tbgrad
from tbgrad import tags
from tbgrad.eventlog import load_run
from tbgrad.verdict import judge, verdict_of

KERNELS = ["hidden_1", "hidden_2", "output"]


def test_verdict_reads_kernels_only_when_every_variable_is_logged(tmp_path, circles):
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [keras.Input((2,))]
        + [keras.layers.Dense(4, "tanh", name=f"hidden_{i}") for i in (1, 2)]
        + [keras.layers.Dense(1, "sigmoid", name="output")]
    )
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    callback = tbgrad.TensorBoard(tmp_path, histogram_freq=0, variables="all")
    model.fit(circles.x_train, circles.y_train, epochs=3, verbose=0, callbacks=[callback])

    run = load_run(tmp_path)
    assert run.train.kernels == KERNELS
    prefix = tags.GRAD_MEAN_ABS + "/"
    logged = {
        t[len(prefix) :]: run.train.scalar(t) for t in run.train.scalars if t.startswith(prefix)
    }
    assert "hidden_1/bias" in logged and "output/bias" in logged
    loss = run.train.scalar(tags.epoch_tag("loss"))
    kernels_only = judge({name: logged[name] for name in KERNELS}, loss)
    with_biases = judge(logged, loss)
    got = verdict_of(tmp_path)
    np.testing.assert_allclose(got.weakest_ratio, kernels_only.weakest_ratio, rtol=1e-12)
    np.testing.assert_allclose(got.strongest_ratio, kernels_only.strongest_ratio, rtol=1e-12)
    # The test means something only if the biases would change the figures.
    assert (with_biases.weakest_ratio, with_biases.strongest_ratio) != (
        kernels_only.weakest_ratio,
        kernels_only.strongest_ratio,
    )
