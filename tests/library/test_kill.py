"""A process killed mid-epoch (SIGKILL: an out-of-memory kill, a preempted
machine) keeps every epoch it finished, with every tag: in ``fit``, in the
tape loop and in a ``GradientLogger`` loop. The training runs in a child
process that kills itself in epoch 3."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tbgrad import tags
from tbgrad.eventlog import load_run

pytestmark = pytest.mark.slow

KILL_EPOCH = 3
STEPS = 4  # per epoch: 64 samples in batches of 16

CHILD = f"""
import os, signal, sys
import numpy as np, keras, tensorflow as tf, tbgrad

path, loop = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 3)).astype("float32")
y = (x[:, :1] > 0).astype("float32")
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, "tanh", name="h"),
                          keras.layers.Dense(1, "sigmoid", name="out")])

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

if loop == "fit":
    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == {KILL_EPOCH} and batch == 1:
                kill()
    model.compile("sgd", "binary_crossentropy")
    model.fit(x, y, batch_size=16, epochs=10, verbose=0,
              callbacks=[tbgrad.TensorBoard(path), Kill()])
elif loop == "tape":
    steps = tf.Variable(0)
    def loss(yb, pred):
        steps.assign_add(1)
        tf.cond(steps == {KILL_EPOCH * STEPS + 2},
                lambda: tf.py_function(lambda: kill() or 0, [], tf.int32),
                lambda: tf.constant(0))
        return keras.losses.binary_crossentropy(yb, pred)
    tbgrad.train_with_tape(model, x, y, epochs=10, batch_size=16, loss=loss, metrics=(),
                           log_dir=path, verbose=0)
else:
    optimizer = keras.optimizers.SGD(0.01)
    logger = tbgrad.GradientLogger(model, path, optimizer=optimizer).attach()
    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.binary_crossentropy(yb, model(xb, training=True)))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss
    for epoch in range(10):
        for i in range(0, 64, 16):
            if epoch == {KILL_EPOCH} and i == 32:
                kill()
            loss = step(x[i:i + 16], y[i:i + 16])
        logger.end_epoch(epoch, {{"loss": float(loss)}})
    logger.close()
"""


@pytest.mark.parametrize("loop", ["fit", "tape", "logger"])
def test_a_killed_process_keeps_every_finished_epoch(tmp_path, loop):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), loop],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    train = load_run(tmp_path).train
    finished = list(range(KILL_EPOCH))
    per_epoch = [
        tags.epoch_tag("loss"),
        *[
            tags.layer_tag(f, layer)
            for f in tags.families(per_layer=True)
            for layer in ("h", "out")
        ],
        *tags.families(per_layer=False),
    ]
    for tag in per_epoch:
        assert train.steps(tag) == finished, tag
