"""Per-layer values on models the other tests do not cover, against a plain tape.

- Kernels of one size separated by a kernel of another size: GradientStats
  reduces same-size kernels together and must put every row back in layer
  order (``_size_groups``).
- A kernel that gets no gradient (off the loss path): the other layers'
  figures stay right and that layer logs zeros.
- ``batch_grad_mean_abs/<layer>`` (integer update_freq): the value of the
  very step it is written at, not an average or a running sum.

The reference is :func:`tape_reference`: the same weights trained with a
hand-written ``tf.GradientTape`` loop and ``w -= lr * g``, independent of
tbgrad and of Keras's optimizers.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbgrad
from tbgrad import tags
from tbgrad.eventlog import load_run

LR = 0.05
BATCH = 32
N = 80  # 3 steps per epoch: 32, 32 and 16 samples
STEPS = 3
EPOCHS = 2


def tape_reference(model, x, y, names, epochs=EPOCHS, batch=BATCH, lr=LR, output=None):
    """Per epoch and layer, the kernel gradient of every step (plain SGD).

    ``model`` is trained in place (pass a twin with the same weights). A
    kernel without a gradient counts as zeros. ``output`` picks the output
    the loss is computed on when the model has several.
    """
    kernels = {name: model.get_layer(name).kernel for name in names}
    out = []
    for _ in range(epochs):
        per_layer = {name: [] for name in names}
        for start in range(0, len(x), batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            with tf.GradientTape() as tape:
                pred = model(xb, training=True)
                if output is not None:
                    pred = pred[output]
                loss = tf.reduce_mean(keras.losses.binary_crossentropy(yb.reshape(-1, 1), pred))
            variables = model.trainable_variables
            grads = tape.gradient(loss, variables)
            by_var = {id(v): g for v, g in zip(variables, grads)}
            for name, kernel in kernels.items():
                g = by_var[id(kernel)]
                per_layer[name].append(np.zeros(kernel.shape) if g is None else g.numpy())
            for v, g in zip(variables, grads):
                if g is not None:
                    v.assign(v - lr * g)
        out.append(per_layer)
    return out


def expected_epoch_stats(reference, name):
    """grad_mean_abs and grad_std of ``name`` per epoch: means over the steps."""
    mean_abs = [np.mean([np.abs(g).mean() for g in epoch[name]]) for epoch in reference]
    std = [np.mean([g.std() for g in epoch[name]]) for epoch in reference]
    return np.array(mean_abs), np.array(std)


def check_epoch_stats(run, reference, names):
    for name in names:
        mean_abs, std = expected_epoch_stats(reference, name)
        got = run.train.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, name))
        np.testing.assert_allclose(got, mean_abs, rtol=1e-4, atol=1e-9, err_msg=name)
        got_std = run.train.scalar(tags.layer_tag(tags.GRAD_STD, name))
        np.testing.assert_allclose(got_std, std, rtol=1e-3, atol=1e-9, err_msg=name)
        np.testing.assert_array_equal(
            run.train.scalar(tags.layer_tag(tags.GRAD_NONFINITE, name)), 0
        )


def train(model, x, y, path, loop, **kwargs):
    """``model`` trained ``EPOCHS`` epochs of SGD by ``loop`` with tbgrad logging."""
    if loop.startswith("fit"):
        model.compile(
            keras.optimizers.SGD(LR),
            kwargs.pop("loss", "binary_crossentropy"),
            jit_compile=loop.endswith("+xla"),
        )
        model.fit(
            x,
            y,
            epochs=EPOCHS,
            batch_size=BATCH,
            shuffle=False,
            verbose=0,
            callbacks=[tbgrad.TensorBoard(path, **kwargs)],
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
            log_dir=path,
            verbose=0,
            jit_compile=loop.endswith("+xla"),
            **kwargs,
        )
    return load_run(path)


# -- kernels of one size separated by another size ---------------------------------

SEPARATED = ["a", "b", "c"]


def separated_sizes_model(seed=5):
    # Kernels [2, 3], [3, 6], [6, 1]: sizes 6, 18, 6. The two 6s are reduced
    # together, so the rows come out as a, c, b and must be put back.
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(3, activation="tanh", name="a"),
            keras.layers.Dense(6, activation="tanh", name="b"),
            keras.layers.Dense(1, activation="sigmoid", name="c"),
        ]
    )


@pytest.fixture(scope="module")
def separated_reference(circles):
    x, y = circles.x_train[:N], circles.y_train[:N]
    model = separated_sizes_model()
    sizes = [int(np.prod(layer.kernel.shape)) for layer in tbgrad.tracked_variables(model)]
    assert sizes == [6, 18, 6]
    return tape_reference(model, x, y, SEPARATED)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "fit+xla", "tape", "tape+xla"])
def test_same_size_kernels_apart_keep_their_own_statistics(
    tmp_path, circles, separated_reference, loop
):
    x, y = circles.x_train[:N], circles.y_train[:N]
    run = train(separated_sizes_model(), x, y, tmp_path, loop)
    assert run.train.steps("grad_mean_abs/b") == list(range(EPOCHS))
    check_epoch_stats(run, separated_reference, SEPARATED)
    # The layers' figures differ, so a mix-up of rows cannot pass unseen.
    first = [expected_epoch_stats(separated_reference, n)[0][0] for n in SEPARATED]
    assert len({round(v, 6) for v in first}) == 3, first
    # The histogram of the epoch's first step is each layer's own gradient.
    for name in SEPARATED:
        for epoch, (_, hist) in enumerate(run.train.histograms[f"gradients/{name}"]):
            g = separated_reference[epoch][name][0]
            assert hist[:, 2].sum() == g.size, name
            np.testing.assert_allclose([hist[0, 0], hist[-1, 1]], [g.min(), g.max()], rtol=1e-5)


# -- a kernel without a gradient ------------------------------------------------------


def functional_with_side_output(seed=7):
    # "side" is a second output that no loss reads: its kernel gets no gradient.
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((2,))
    h = keras.layers.Dense(4, activation="tanh", name="a")(inputs)
    out = keras.layers.Dense(1, activation="sigmoid", name="out")(h)
    side = keras.layers.Dense(3, name="side")(h)
    return keras.Model(inputs, {"out": out, "side": side})


class WithUnusedLayer(keras.Model):
    """A subclassed model with a built layer that ``call`` never uses."""

    def __init__(self):
        super().__init__()
        self.a = keras.layers.Dense(4, activation="tanh", name="a")
        self.side = keras.layers.Dense(3, name="side")
        self.head = keras.layers.Dense(1, activation="sigmoid", name="out")

    def build(self, input_shape):
        self.a.build(input_shape)
        self.side.build(input_shape)
        self.head.build((None, 4))

    def call(self, x):
        return self.head(self.a(x))


def subclassed_with_unused_layer(seed=7):
    keras.utils.set_random_seed(seed)
    model = WithUnusedLayer()
    model.build((None, 2))
    return model


OFF_PATH_CASES = {
    "fit-functional": (functional_with_side_output, "out"),
    "fit+xla-functional": (functional_with_side_output, "out"),
    "fit-subclassed": (subclassed_with_unused_layer, None),
    "tape-subclassed": (subclassed_with_unused_layer, None),
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("case", list(OFF_PATH_CASES))
def test_kernel_off_the_loss_path_logs_zero_and_the_others_stay_right(tmp_path, circles, case):
    make, output = OFF_PATH_CASES[case]
    x, y = circles.x_train[:N], circles.y_train[:N]
    model = make()
    twin = make()
    twin.set_weights(model.get_weights())
    side_kernel = model.get_layer("side").kernel.numpy()
    names = sorted(layer.name for layer in tbgrad.tracked_variables(model))
    assert names == ["a", "out", "side"]
    reference = tape_reference(twin, x, y, names, output=output)
    loop = case.split("-")[0]
    if output is None:
        run = train(model, x, y, tmp_path, loop)
    else:
        run = train(model, x, {output: y}, tmp_path, loop, loss={output: "binary_crossentropy"})
    # The layers on the path: exactly the plain tape's figures, non-zero.
    check_epoch_stats(run, reference, ["a", "out"])
    for name in ("a", "out"):
        assert run.train.scalar(f"grad_mean_abs/{name}").min() > 0, name
    # The layer off the path: still logged, as zeros, every epoch.
    for family in (tags.GRAD_MEAN_ABS, tags.GRAD_STD, tags.GRAD_NONFINITE):
        tag = tags.layer_tag(family, "side")
        assert run.train.steps(tag) == list(range(EPOCHS)), tag
        np.testing.assert_array_equal(run.train.scalar(tag), 0, err_msg=tag)
    for step, hist in run.train.histograms["gradients/side"]:
        assert hist[:, 2].sum() == side_kernel.size
        assert hist[0, 0] == hist[-1, 1] == 0.0, step
    # Its kernel did not move.
    np.testing.assert_array_equal(model.get_layer("side").kernel.numpy(), side_kernel)
    np.testing.assert_allclose(run.train.scalar("weight_mean/side"), side_kernel.mean(), rtol=1e-6)


# -- batch_grad_mean_abs: the step's own value ----------------------------------------


@pytest.mark.parametrize("update_freq", [1, 2])
@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_batch_grad_mean_abs_is_that_steps_mean_abs(
    tmp_path, circles, separated_reference, loop, update_freq
):
    # fit runs one step per call here (steps_per_execution=1), so every step's
    # logs are there and the value written at global step s is step s's.
    x, y = circles.x_train[:N], circles.y_train[:N]
    run = train(separated_sizes_model(), x, y, tmp_path, loop, update_freq=update_freq)
    total = EPOCHS * STEPS
    written = list(range(update_freq, total + 1, update_freq))
    for name in SEPARATED:
        per_step = [np.abs(g).mean() for epoch in separated_reference for g in epoch[name]]
        assert len(per_step) == total
        tag = tags.layer_tag(tags.BATCH_GRAD_MEAN_ABS, name)
        assert run.train.steps(tag) == written, tag
        want = [per_step[step - 1] for step in written]
        np.testing.assert_allclose(run.train.scalar(tag), want, rtol=1e-4, err_msg=tag)
