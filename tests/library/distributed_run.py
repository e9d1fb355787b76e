"""Trains the same model on one device and on two logical CPU replicas.

Run by tests/test_reliability_distributed.py in a subprocess, because logical
devices must be configured before TensorFlow initializes its devices (the
pytest process has done that long before):

    python tests/library/distributed_run.py OUT_DIR

writes OUT_DIR/{fit,tape}-{1,2}: the same initial weights and the same
batches in order (no shuffling), once with the default strategy and once
under ``MirroredStrategy`` over two logical CPUs.

The fit run uses 200 samples (a last batch of 8: 4 per replica). Keras's own
train step weights each replica's mean loss by 1/replicas, so with unequal
shares (a last batch of 9 = 5 + 4) model.fit applies a slightly different
gradient than one device would; tbgrad logs what was applied either way.
train_with_tape weights each replica by its share of the samples and is
exact for any split: it gets 193 samples (a last batch of 1 = 1 + 0).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tbgrad.lab import distribute  # noqa: E402

distribute.configure_cpu_replicas(2)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tbgrad  # noqa: E402

EPOCHS = 3
BATCH = 32
LR = 0.05


def train(loop: str, strategy, weights, data, samples: int, log_dir: str) -> None:
    x, y = data.x_train[:samples], data.y_train[:samples]
    with strategy.scope():
        model = tbgrad.lab.build_mlp(depth=2, width=4, activation="tanh", init="glorot_uniform")
        model.set_weights(weights)
        optimizer = keras.optimizers.SGD(LR, momentum=0.9)
    if loop == "fit":
        with strategy.scope():
            model.compile(optimizer, "binary_crossentropy", metrics=["accuracy"])
        model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            shuffle=False,
            verbose=0,
            validation_data=(data.x_test[:64], data.y_test[:64]),
            callbacks=[tbgrad.TensorBoard(log_dir, update_freq=2)],
        )
    else:
        tbgrad.train_with_tape(
            model,
            x,
            y,
            epochs=EPOCHS,
            batch_size=BATCH,
            optimizer=optimizer,
            validation_data=(data.x_test[:64], data.y_test[:64]),
            log_dir=log_dir,
            update_freq=2,
            shuffle=False,
            verbose=0,
        )


def main(argv=None) -> int:
    (out,) = argv or sys.argv[1:]
    data = tbgrad.lab.load_dataset("circles-a")
    keras.utils.set_random_seed(1)
    weights = tbgrad.lab.build_mlp(
        depth=2, width=4, activation="tanh", init="glorot_uniform"
    ).get_weights()
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for loop, samples in (("fit", 200), ("tape", 193)):
        train(loop, tf.distribute.get_strategy(), weights, data, samples, f"{out}/{loop}-1")
        train(loop, mirrored, weights, data, samples, f"{out}/{loop}-2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
