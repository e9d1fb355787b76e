"""Behaviours the rest of the suite let planted bugs through, each against an
independent computation: the update ratio under XLA with
``steps_per_execution`` and ``stats_every``; activation health of the training
call only, per epoch and over replicas; ``clip/share`` with ``clipvalue``;
the first NaN's step under XLA with ``stats_every``; the verdict's notes at
their thresholds; the dashboard's newest layer-order record.

Real TensorFlow, real event files read back with TensorBoard's reader.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_mlp, update_ratios_by_hand
from tensorboard.plugins.scalar import metadata as scalar_metadata

import tbgrad
from tbgrad import tags
from tbgrad.dashboard import metadata as dashboard_metadata
from tbgrad.eventlog import load_run
from tbgrad.verdict import DEAD_ABOVE, SATURATED_ABOVE

ROOT = Path(__file__).resolve().parents[2]
MLP = ["hidden_1", "hidden_2", "output"]


def _loss(y, p):
    return tf.reduce_mean(keras.losses.binary_crossentropy(y, p))


def _scalar(run, family, layer):
    return run.train.scalar(tags.layer_tag(family, layer))


# -- 1. the update ratio under XLA, steps_per_execution and stats_every ------

XLA_BATCH, XLA_N, XLA_EPOCHS = 16, 112, 2  # 7 steps an epoch
LR, MOMENTUM = 0.05, 0.9


def _ratios_by_hand(x, y):
    """``[epochs, steps, layers]``: ||w_after - w_before|| / ||w_before|| of
    every step of a plain eager loop with the same optimizer, the kernels
    read around ``optimizer.apply``; and the output kernel it ends with."""
    model, optimizer = tiny_mlp(), keras.optimizers.SGD(LR, momentum=MOMENTUM)
    kernels = [model.get_layer(name).kernel for name in MLP]
    ratios = update_ratios_by_hand(model, optimizer, kernels, x, y, XLA_BATCH, XLA_EPOCHS, _loss)
    return ratios, model.get_layer("output").kernel.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("diagnostics_every", [1, 3])
def test_update_ratio_under_xla_with_steps_per_execution_and_stats_every(
    tmp_path, circles, diagnostics_every
):
    # stats_every=2 thins the gradient record (steps 0, 2, 4, 6); the update
    # ratio is a diagnostic and follows diagnostics_every alone: every step,
    # or steps 0, 3, 6. Executions of 3, 3 and 1 steps.
    x, y = circles.x_train[:XLA_N], circles.y_train[:XLA_N]
    model = tiny_mlp()
    model.compile(
        keras.optimizers.SGD(LR, momentum=MOMENTUM),
        "binary_crossentropy",
        jit_compile=True,
        steps_per_execution=3,
    )
    callback = tbgrad.TensorBoard(
        tmp_path, histogram_freq=0, stats_every=2, diagnostics_every=diagnostics_every
    )
    model.fit(
        x, y, epochs=XLA_EPOCHS, batch_size=XLA_BATCH, shuffle=False, verbose=0,
        callbacks=[callback],
    )  # fmt: skip
    per_step, output_kernel = _ratios_by_hand(x, y)
    assert per_step.shape == (XLA_EPOCHS, 7, len(MLP))
    # The training moved as the hand-written loop did.
    np.testing.assert_allclose(model.get_layer("output").kernel.numpy(), output_kernel, rtol=1e-4)
    expected = per_step[:, ::diagnostics_every].mean(axis=1)
    run = load_run(tmp_path)
    logged = np.array([_scalar(run, tags.UPDATE_RATIO, n) for n in MLP]).T
    assert logged.shape == (XLA_EPOCHS, len(MLP))
    np.testing.assert_allclose(logged, expected, rtol=1e-4)
    # The steps stats_every counts give other figures: the test tells them apart.
    assert not np.allclose(expected, per_step[:, ::2].mean(axis=1), rtol=1e-3)


# -- 2. activation health: the training call only, in a custom train step ----

BATCH, N, EPOCHS = 16, 48, 2  # 3 steps an epoch


def _relu_first_model():
    # r: unit 0 is positive only for x0 + x1 > 4 (never for the training
    # data, often for the large evaluation inputs), unit 3 never; t
    # saturates on large inputs only.
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(4, "relu", name="r"),
            keras.layers.Dense(3, "tanh", name="t"),
            keras.layers.Dense(1, "sigmoid", name="out"),
        ]
    )
    r = model.get_layer("r")
    r.kernel.assign([[1.0, 1.0, -1.0, 0.0], [1.0, -1.0, 1.0, 0.0]])
    r.bias.assign([-4.0, 0.0, 0.0, -100.0])
    model.get_layer("t").kernel.assign(np.full((4, 3), 0.6, "float32") * np.float32([1, 2, 3]))
    model.get_layer("out").kernel.assign([[3.0], [3.0], [3.0]])
    model.get_layer("out").bias.assign([-4.0])
    return model


def _health(model, batches) -> dict:
    """The activation-health tags of one epoch whose training steps saw
    ``batches`` (the weights held still), by numpy on a feature model."""
    names = ["r", "t", "out"]
    features = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    zero, saturated, out_saturated, alive = [], [], [], np.zeros(4, bool)
    for xb in batches:
        r, t, out = (np.asarray(a) for a in features(xb))
        zero.append(np.mean(r == 0))
        alive |= (r > 0).any(axis=0)
        saturated.append(np.mean(np.abs(t) > 0.97))
        out_saturated.append(np.mean((out < 0.03) | (out > 0.97)))
    return {
        tags.layer_tag(tags.ACTIVATION_ZERO, "r"): np.mean(zero),
        tags.layer_tag(tags.ACTIVATION_DEAD, "r"): 1 - alive.mean(),
        tags.layer_tag(tags.ACTIVATION_SATURATED, "t"): np.mean(saturated),
        tags.layer_tag(tags.ACTIVATION_SATURATED, "out"): np.mean(out_saturated),
    }


def _small_data(n: int = N, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype("float32")
    return x, (x[:, :1] > 0).astype("float32")


@pytest.mark.parametrize("order", ["eval-after", "eval-before"])
def test_activation_health_ignores_a_training_false_call_in_the_same_trace(tmp_path, order):
    x, y = _small_data()
    x_eval = (_small_data(8, seed=1)[0] * 6).astype("float32")
    model = _relu_first_model()
    optimizer = keras.optimizers.SGD(0.0)  # the weights hold still
    loss_fn = keras.losses.BinaryCrossentropy()
    logger = tbgrad.GradientLogger(
        model, tmp_path, optimizer=optimizer, histogram_freq=0, diagnostics_every=1
    ).attach()

    @tf.function
    def train_step(xb, yb, xe):
        extra = model(xe, training=False) if order == "eval-before" else None
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        if order == "eval-after":
            extra = model(xe, training=False)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, extra

    for epoch in range(EPOCHS):
        for start in range(0, N, BATCH):
            loss, _ = train_step(x[start : start + BATCH], y[start : start + BATCH], x_eval)
        logger.end_epoch(epoch, {"loss": loss})
    logger.close()
    batches = [x[s : s + BATCH] for s in range(0, N, BATCH)]
    expected = _health(model, batches)
    # The evaluation call's outputs would tell: unit 0 alive, t saturated.
    evaluated = _health(model, [x_eval] * len(batches))
    for tag, want in expected.items():
        assert abs(evaluated[tag] - want) > 0.05, tag
    run = load_run(tmp_path)
    for tag, want in expected.items():
        np.testing.assert_allclose(run.train.scalar(tag), [want] * EPOCHS, rtol=1e-6, err_msg=tag)
    assert expected[tags.layer_tag(tags.ACTIVATION_DEAD, "r")] == 0.5


# -- 3. dead units are decided per epoch ---------------------------------------


@pytest.mark.parametrize(
    "jit", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["fit", "xla"]
)
def test_a_unit_that_dies_in_epoch_1_reads_dead_there_only(tmp_path, jit):
    # Unit 1 of r is alive in epoch 0, dead in epoch 1 (bias -100 set at the
    # end of epoch 0), alive again in epoch 2 (bias 0). The weights hold still
    # otherwise (learning rate 0).
    x, y = _small_data()
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(4, "relu", name="r"),
            keras.layers.Dense(1, "sigmoid", name="out"),
        ]
    )
    r = model.get_layer("r")
    r.kernel.assign([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]])
    biases = {0: [0.0, -100.0, 0.0, 0.0], 1: [0.0, 0.0, 0.0, 0.0]}

    class SetBias(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch in biases:
                r.bias.assign(biases[epoch])

    model.compile(keras.optimizers.SGD(0.0), "binary_crossentropy", jit_compile=jit)
    model.fit(
        x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
        callbacks=[tbgrad.TensorBoard(tmp_path, histogram_freq=0, diagnostics_every=1), SetBias()],
    )  # fmt: skip
    features = keras.Model(model.inputs[0], r.output)
    dead, zero = [], []
    for bias in ([0.0] * 4, biases[0], biases[1]):
        r.bias.assign(bias)
        outputs = [np.asarray(features(x[s : s + BATCH])) for s in range(0, N, BATCH)]
        dead.append(1 - np.any([(a > 0).any(axis=0) for a in outputs], axis=0).mean())
        zero.append(np.mean([np.mean(a == 0) for a in outputs]))
    assert dead == [0.0, 0.25, 0.0]
    run = load_run(tmp_path)
    np.testing.assert_array_equal(_scalar(run, tags.ACTIVATION_DEAD, "r"), dead)
    np.testing.assert_allclose(_scalar(run, tags.ACTIVATION_ZERO, "r"), zero, rtol=1e-6)


# -- 4. activation counts over replicas ----------------------------------------

REPLICA_SCRIPT = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tbgrad.lab import distribute
distribute.configure_cpu_replicas(2)
import keras, numpy as np, tensorflow as tf
import tbgrad

out, data = sys.argv[1], np.load(sys.argv[2])
x, y, weights = data["x"], data["y"], [data[f"w{i}"] for i in range(6)]

def model_in(strategy):
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((2,)),
            keras.layers.Dense(4, "relu", name="r"),
            keras.layers.Dense(3, "tanh", name="t"),
            keras.layers.Dense(1, "sigmoid", name="out"),
        ])
        model.set_weights(weights)
        return model, keras.optimizers.SGD(0.0)

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
for name, strategy in (("1", tf.distribute.get_strategy()), ("2", mirrored)):
    assert strategy.num_replicas_in_sync == int(name)
    model, optimizer = model_in(strategy)
    with strategy.scope():
        model.compile(optimizer, "binary_crossentropy")
    model.fit(
        x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
        callbacks=[tbgrad.TensorBoard(f"{out}/fit-{name}", histogram_freq=0,
                                      diagnostics_every=1)],
    )
    model, optimizer = model_in(strategy)
    tbgrad.train_with_tape(
        model, x, y, epochs=2, batch_size=16, shuffle=False, optimizer=optimizer,
        log_dir=f"{out}/tape-{name}", verbose=0, histogram_freq=0, diagnostics_every=1,
    )
"""


def _replica_data():
    # Each batch of 16: 8 small inputs (t not saturated, r's units 0 and 1
    # never positive), then 8 large ones (t saturated, units 0 and 1 alive):
    # one replica's half alone gives other shares than the whole batch.
    rng = np.random.default_rng(3)
    parts = []
    for _ in range(3):
        parts += [rng.normal(size=(8, 2)) * 0.1, rng.normal(size=(8, 2)) * 4]
    x = np.concatenate(parts).astype("float32")
    return x, (x[:, :1] > 0).astype("float32")


@pytest.fixture(scope="module")
def replica_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("replicas")
    x, y = _replica_data()
    model = _relu_first_model()
    model.get_layer("r").bias.assign([-1.0, -1.0, 0.0, -100.0])
    model.get_layer("r").kernel.assign([[1.0, -1.0, 1.0, 0.0], [1.0, -1.0, 0.0, 0.0]])
    weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    np.savez(out / "data.npz", x=x, y=y, **weights)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", REPLICA_SCRIPT, str(out), str(out / "data.npz")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, model, x


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["fit", "tape"])
def test_activation_counts_are_summed_over_replicas(replica_runs, loop):
    out, model, x = replica_runs
    expected = _health(model, [x[s : s + 16] for s in range(0, len(x), 16)])
    first_halves = _health(model, [x[s : s + 8] for s in range(0, len(x), 16)])
    # Every share is neither 0 nor 1, and one replica's half alone differs.
    for tag, want in expected.items():
        assert 0 < want < 1, tag
    assert expected[tags.layer_tag(tags.ACTIVATION_DEAD, "r")] == 0.25
    assert first_halves[tags.layer_tag(tags.ACTIVATION_DEAD, "r")] == 0.75
    for tag in expected:
        assert abs(first_halves[tag] - expected[tag]) > 0.05, tag
    for replicas in ("1", "2"):
        run = load_run(out / f"{loop}-{replicas}")
        for tag, want in expected.items():
            np.testing.assert_allclose(
                run.train.scalar(tag), [want, want], rtol=1e-6, err_msg=f"{replicas}: {tag}"
            )


# -- 5. clip/share with clipvalue ------------------------------------------------


def test_clip_share_with_clipvalue_against_the_tapes_gradients(tmp_path):
    # Small inputs: in some steps a bias has the largest |g| entry.
    x, y = _small_data(56)  # 4 steps: 16, 16, 16, 8
    x *= 0.2
    model = tiny_mlp()
    largest, in_kernels, norms = [], [], []
    for start in range(0, 56, BATCH):
        with tf.GradientTape() as tape:
            loss = _loss(y[start : start + BATCH], model(x[start : start + BATCH], training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        sizes = {
            v.path: float(np.abs(g.numpy()).max()) for v, g in zip(model.trainable_variables, grads)
        }
        largest.append(max(sizes.values()))
        in_kernels.append(max(v for path, v in sizes.items() if path.endswith("kernel")))
        norms.append(np.sqrt(sum(float(np.sum(g.numpy() ** 2)) for g in grads)))
    largest, in_kernels, norms = np.array(largest), np.array(in_kernels), np.array(norms)
    # Between the smallest and the second smallest step's largest |g|: three
    # steps of four clipped. A limit on the norms would clip all four, one
    # on the kernels' entries alone (the tracked variables) two.
    ordered = np.sort(largest)
    clipvalue = float(ordered[0] + ordered[1]) / 2
    share = float(np.mean(largest > clipvalue))
    assert share == 0.75 and (norms > clipvalue).all()
    assert np.mean(in_kernels > clipvalue) == 0.5
    model.compile(keras.optimizers.SGD(0.0, clipvalue=clipvalue), "binary_crossentropy")
    model.fit(
        x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
        callbacks=[tbgrad.TensorBoard(tmp_path, histogram_freq=0, diagnostics_every=1)],
    )  # fmt: skip
    train = load_run(tmp_path).train
    np.testing.assert_allclose(train.scalar(tags.CLIP_SHARE), [share, share])
    np.testing.assert_allclose(train.scalar(tags.CLIP_NORM_BEFORE), [norms.mean()] * 2, rtol=1e-4)
    np.testing.assert_allclose(
        train.scalar(tags.CLIP_NORM_BEFORE_MAX), [norms.max()] * 2, rtol=1e-4
    )


# -- 6. the first NaN's step under XLA with stats_every ----------------------------


@pytest.mark.slow
def test_first_nonfinite_step_under_xla_with_stats_every(tmp_path):
    # 7 steps an epoch; the dataset goes on across epochs (steps_per_epoch),
    # so the NaN sample is in epoch 1 only, in its step 4, a step
    # stats_every=2 counts (0, 2, 4, 6).
    x, y = _small_data(2 * 7 * BATCH)
    x[7 * BATCH + 4 * BATCH + 3, 0] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    model = tiny_mlp()
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy", jit_compile=True)
    callback = tbgrad.TensorBoard(tmp_path, histogram_freq=0, stats_every=2)
    model.fit(dataset, epochs=2, steps_per_epoch=7, shuffle=False, verbose=0, callbacks=[callback])
    assert callback.first_nonfinite == {
        "what": "gradient",
        "layer": "hidden_1",
        "epoch": 1,
        "step_in_epoch": 4,
        "step": 11,
    }
    train = load_run(tmp_path).train
    assert train.first_nonfinite == (
        1,
        "hidden_1 gradient turned NaN or Inf at step 11 (epoch 1, step 4 of the epoch)",
    )
    # Epoch 0 saw no NaN; epoch 1's counted steps 4 and 6 did.
    nonfinite = _scalar(load_run(tmp_path), tags.GRAD_NONFINITE, "hidden_1")
    assert nonfinite[0] == 0 and nonfinite[1] == 2 * model.get_layer("hidden_1").kernel.numpy().size


# -- 7. the verdict's notes at their thresholds -----------------------------------

HIDDEN = ["hidden_1", "hidden_2", "hidden_3", "hidden_4"]
V_EPOCHS = 6


def _write_run(run_dir, scalars: dict[str, list[float]]):
    """Writes ``{tag: value per epoch}`` into ``run_dir/train`` as float64
    scalars (a threshold such as 0.35 is then exact), read back by load_run."""
    writer = tf.summary.create_file_writer(str(run_dir / tags.TRAIN_DIR))
    with writer.as_default():
        for tag, values in scalars.items():
            for step, value in enumerate(values):
                tf.summary.write(
                    tag,
                    tf.constant(value, tf.float64),
                    step=step,
                    metadata=scalar_metadata.create_summary_metadata(tag, ""),
                )
    writer.close()
    return run_dir


def _healthy(family: str, values: dict[str, list[float]]) -> dict[str, list[float]]:
    # Every hidden layer at half the output layer's mean |g|: healthy.
    out = {f"{tags.GRAD_MEAN_ABS}/{n}": [0.05] * V_EPOCHS for n in HIDDEN}
    out[f"{tags.GRAD_MEAN_ABS}/output"] = [0.1] * V_EPOCHS
    out[tags.epoch_tag("loss")] = [0.6] * V_EPOCHS
    out |= {f"{family}/{n}": v for n, v in values.items()}
    return out


ABOVE_SATURATED = float(np.nextafter(SATURATED_ABOVE, 1))


@pytest.mark.parametrize(
    "value, note",
    [
        (SATURATED_ABOVE, None),
        (float(np.nextafter(SATURATED_ABOVE, 0)), None),
        (ABOVE_SATURATED, "hidden_2 saturated (35%)"),
        (0.36, "hidden_2 saturated (36%)"),
    ],
)
def test_saturation_note_at_its_threshold(tmp_path, value, note):
    assert SATURATED_ABOVE == 0.35
    others = {n: [0.1] * V_EPOCHS for n in HIDDEN}
    found = tbgrad.verdict_of(
        _write_run(
            tmp_path, _healthy(tags.ACTIVATION_SATURATED, others | {"hidden_2": [value] * V_EPOCHS})
        )
    )
    assert load_run(tmp_path).train.scalar(f"{tags.ACTIVATION_SATURATED}/hidden_2")[0] == value
    why = found.explanation
    assert found.label == "healthy"
    assert why.notes == (() if note is None else (note,))
    assert why.signals["saturated"] == pytest.approx((0.3 + value) / 4)
    assert why.suggestion == ""


@pytest.mark.parametrize(
    "dead, note",
    [
        (0.5, None),  # 2 of 4 units: not over half
        (float(np.nextafter(0.5, 1)), "hidden_2: up to 50% of units dead"),
        (0.75, "hidden_2: up to 75% of units dead"),
    ],
)
def test_dead_note_at_its_threshold(tmp_path, dead, note):
    assert DEAD_ABOVE == 0.5
    values = {n: [0.0] * V_EPOCHS for n in HIDDEN} | {"hidden_2": [dead] * V_EPOCHS}
    why = tbgrad.explain(_write_run(tmp_path, _healthy(tags.ACTIVATION_DEAD, values)))
    assert why.signals["dead"] == dead
    if note is None:
        assert (why.notes, why.suggestion) == ((), "")
    else:
        assert why.notes == (note,)
        assert why.suggestion == f"{note}: try he_uniform, a lower learning rate, or leaky_relu"


def test_dead_note_of_several_layers_gives_the_largest_median(tmp_path):
    # Medians over the epochs: hidden_1 0.6, hidden_2 0.9, hidden_3 0.75,
    # hidden_4 exactly 0.5 (not flagged). The first flagged layer reads 60%,
    # the mean 75%, the largest single epoch 100%: the note says 90%.
    values = {
        "hidden_1": [0.6] * 4 + [0.0, 1.0],
        "hidden_2": [0.9] * 4 + [1.0, 0.25],
        "hidden_3": [0.75] * V_EPOCHS,
        "hidden_4": [0.5] * 4 + [1.0, 1.0],
    }
    medians = {n: float(np.median(v)) for n, v in values.items()}
    assert medians == {"hidden_1": 0.6, "hidden_2": 0.9, "hidden_3": 0.75, "hidden_4": 0.5}
    why = tbgrad.explain(load_run(_write_run(tmp_path, _healthy(tags.ACTIVATION_DEAD, values))))
    note = "hidden_1..hidden_3: up to 90% of units dead"
    assert why.notes == (note,)
    assert why.signals["dead"] == 0.9
    assert why.suggestion == f"{note}: try he_uniform, a lower learning rate, or leaky_relu"


def test_a_real_run_with_2_of_4_units_dead_is_not_flagged_and_3_of_4_is(tmp_path):
    x, y = _small_data()
    for dead_units in (2, 3):
        keras.utils.set_random_seed(5)
        bias = [-100.0] * dead_units + [0.0] * (4 - dead_units)
        model = keras.Sequential(
            [
                keras.Input((2,)),
                keras.layers.Dense(4, "relu", name="hidden_1", kernel_initializer="ones",
                                   bias_initializer=keras.initializers.Constant(bias)),
                keras.layers.Dense(4, "tanh", name="hidden_2"),
                keras.layers.Dense(1, "sigmoid", name="output"),
            ]
        )  # fmt: skip
        model.compile(keras.optimizers.SGD(0.0), "binary_crossentropy")
        path = tmp_path / str(dead_units)
        model.fit(
            np.abs(x), y, batch_size=BATCH, epochs=2, verbose=0,
            callbacks=[tbgrad.TensorBoard(path, histogram_freq=0, diagnostics_every=1)],
        )  # fmt: skip
        run = load_run(path)
        np.testing.assert_array_equal(
            _scalar(run, tags.ACTIVATION_DEAD, "hidden_1"), [dead_units / 4] * 2
        )
        notes = [n for n in tbgrad.explain(run).notes if "dead" in n]
        want = [] if dead_units == 2 else ["hidden_1: up to 75% of units dead"]
        assert notes == want


# -- 8. the dashboard's layer order: the newest record wins ---------------------------


def _fit_named(path, names):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((2,))]
        + [keras.layers.Dense(3, "tanh", name=n) for n in names[:-1]]
        + [keras.layers.Dense(1, "sigmoid", name=names[-1])]
    )
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    x, y = _small_data(32)
    model.fit(
        x, y, batch_size=16, epochs=2, verbose=0,
        callbacks=[tbgrad.TensorBoard(path, histogram_freq=0, write_graph=False)],
    )  # fmt: skip


@pytest.mark.slow
def test_a_resumed_run_shows_the_layer_order_of_its_last_fit(tmp_path, plugin_get):
    _fit_named(tmp_path / "run", ["h1", "h2", "out"])
    # TensorBoard reads a folder's event files in name order, whose first
    # field is the second the file was opened: the second fit opens its file
    # in a later second, as a resumed run would.
    (first,) = load_run(tmp_path / "run").train.event_files
    opened = int(first.split(".")[3])
    while int(time.time()) <= opened:
        time.sleep(0.05)
    _fit_named(tmp_path / "run", ["h2", "h1", "out"])
    assert len(load_run(tmp_path / "run").train.event_files) == 2
    (run,) = plugin_get(tmp_path, "/runs")
    assert run["layers"] == ["h2", "h1", "out"]
    assert run["layer_order"] == "summary"
    heatmap = plugin_get(tmp_path, "/heatmap", "run=run/train&stat=grad_mean_abs")
    assert heatmap["layers"] == ["h2", "h1", "out"]


def test_of_several_layer_order_records_in_one_file_the_last_wins(tmp_path, plugin_get):
    writer = tf.summary.create_file_writer(str(tmp_path / "run" / tags.TRAIN_DIR))
    first, last = ["a", "b", "out"], ["b", "c", "a", "out"]
    dashboard_metadata.write_layers(writer, first)
    dashboard_metadata.write_layers(writer, last, kernels=last)
    with writer.as_default():
        for name in sorted(set(first + last)):
            for step in range(2):
                tf.summary.scalar(tags.layer_tag(tags.GRAD_MEAN_ABS, name), 0.1, step=step)
    writer.close()
    (run,) = plugin_get(tmp_path, "/runs")
    assert (run["layers"], run["layer_order"]) == (last, "summary")
    heatmap = plugin_get(tmp_path, "/heatmap", "run=run/train&stat=grad_mean_abs")
    assert heatmap["layers"] == last
    np.testing.assert_allclose(heatmap["values"], 0.1)
