"""One worker of a two-worker MultiWorkerMirroredStrategy, or its reference.

Run by tests/library/test_multi_worker.py, once per worker with its
TF_CONFIG, every worker given the same OUT_DIR:

    TF_CONFIG=... python tests/library/multi_worker_run.py OUT_DIR

runs ``train.py --strategy multi-worker`` (the tape loop, shuffled with the
run's seed, ``batch_*`` tags every 2 steps) into ``OUT_DIR/cli``, then trains
a model from fixed initial weights on the same batches in order with an own
``strategy.run`` loop and ``tbgrad.GradientLogger`` into ``OUT_DIR/own``.
With ``--single`` (no TF_CONFIG) it runs the same on one device: the
reference. Prints one JSON line: the worker's task, its temporary folders
left behind (none) and what ``tbgrad.TensorBoard``, a plain ``model.fit``
and ``train_with_tape`` shuffling without a seed raise on several workers.

The own loop takes 192 samples in global batches of 32 (16 per worker):
every batch is full, so ``compute_average_loss(global_batch_size=32)`` is
the global batch's mean, as on one device.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tbgrad  # noqa: E402
from tbgrad import _multi_worker  # noqa: E402
from tbgrad.cli import train as train_cli  # noqa: E402
from tbgrad.lab import distribute  # noqa: E402

EPOCHS = 2
BATCH = 32
SAMPLES = 192
LR = 0.05
CLI_FLAGS = ["--depth", "2", "--width", "4", "--epochs", "2", "--loop", "tape"]
CLI_FLAGS += ["--update-freq", "2", "--quiet"]


def build(strategy, weights):
    with strategy.scope():
        model = tbgrad.lab.build_mlp(depth=2, width=4, activation="tanh", init="glorot_uniform")
        model.set_weights(weights)
        optimizer = keras.optimizers.SGD(LR, momentum=0.9)
    return model, optimizer


def own_loop(strategy, weights, data, log_dir: str) -> None:
    model, optimizer = build(strategy, weights)
    x = data.x_train[:SAMPLES].astype("float32")
    y = data.y_train[:SAMPLES].astype("float32").reshape(-1, 1)
    batches = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    )

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            per_sample = keras.losses.binary_crossentropy(yb, model(xb, training=True))
            loss = tf.nn.compute_average_loss(per_sample, global_batch_size=BATCH)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(xb, yb):
        losses = strategy.run(replica_step, args=(xb, yb))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    with tbgrad.GradientLogger(model, log_dir, optimizer=optimizer) as logger:
        for epoch in range(EPOCHS):
            total = [float(train_step(xb, yb)) for xb, yb in batches]
            logger.end_epoch(epoch, {"loss": float(np.mean(total))})


def refusals(strategy, weights) -> dict:
    """What tbgrad.TensorBoard, a plain model.fit and an unseeded shuffle
    raise here."""
    out = {}
    try:
        tbgrad.TensorBoard(os.path.join(tempfile.gettempdir(), "never-made"))
    except ValueError as err:
        out["callback"] = str(err)
    model, optimizer = build(strategy, weights)
    with strategy.scope():
        model.compile(optimizer, "binary_crossentropy")
    try:
        model.fit(np.zeros((8, 2)), np.zeros((8, 1)), epochs=1, verbose=0)
        out["fit"] = "ran"
    except Exception as err:  # noqa: BLE001 - the canary reports whatever Keras raises
        out["fit"] = f"{type(err).__name__}: {err}"
    try:
        tbgrad.train_with_tape(model, np.zeros((8, 2)), np.zeros(8), shuffle=True, verbose=0)
    except ValueError as err:
        out["unseeded"] = str(err)
    return out


def main(argv=None) -> int:
    out, *flags = argv or sys.argv[1:]
    single = "--single" in flags
    temporary = set(glob.glob(os.path.join(tempfile.gettempdir(), _multi_worker.TEMP_PREFIX + "*")))
    cli = [*CLI_FLAGS, "--logdir", os.path.join(out, "cli")]
    code = train_cli.main(cli if single else [*cli, "--strategy", "multi-worker"])
    # The strategy train.py started: one per process.
    strategy = tf.distribute.get_strategy() if single else distribute.start_multi_worker()
    data = tbgrad.lab.load_dataset("circles-a")
    keras.utils.set_random_seed(1)
    weights = tbgrad.lab.build_mlp(
        depth=2, width=4, activation="tanh", init="glorot_uniform"
    ).get_weights()
    own_loop(strategy, weights, data, os.path.join(out, "own"))
    left = set(glob.glob(os.path.join(tempfile.gettempdir(), _multi_worker.TEMP_PREFIX + "*")))
    report = {
        "cli": code,
        "pid": os.getpid(),
        "chief": _multi_worker.is_chief(strategy),
        "temporary_left": sorted(left - temporary),
    }
    if not single:
        resolver = strategy.cluster_resolver
        report.update(task=[resolver.task_type, resolver.task_id], **refusals(strategy, weights))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
