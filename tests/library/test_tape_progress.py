"""train_with_tape's progress bar shows each epoch's own figures."""

from __future__ import annotations

import contextlib
import io
import re

import keras
from conftest import tiny_mlp

import tbgrad


def test_progress_bar_shows_the_last_epoch_not_the_average(circles):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history = tbgrad.train_with_tape(
            tiny_mlp(),
            circles.x_train[:200],
            circles.y_train[:200],
            epochs=3,
            batch_size=32,
            optimizer=keras.optimizers.SGD(0.5),
            validation_data=(circles.x_test[:50], circles.y_test[:50]),
        )
    final = out.getvalue().rsplit("\r", 1)[-1]
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        shown = float(re.search(rf"(?<![\w]){name}: ([0-9.e+-]+)", final).group(1))
        assert shown == round(history[name][-1], 4), (name, final)
    mean_loss = sum(history["loss"]) / 3
    assert round(mean_loss, 4) != round(history["loss"][-1], 4)  # the two readings differ
