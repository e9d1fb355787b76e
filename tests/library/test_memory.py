"""Memory bounded by the layers: the state tbgrad keeps between steps does
not grow with the size of the layers (``tbgrad bench --memory`` measures it
and the peak RSS on a 21.5M-parameter model)."""

from __future__ import annotations

import keras
import numpy as np

import tbgrad
from tbgrad.lab.memory import MEMORY_VARIANTS, _rows, format_memory_table, parameters


def _state_bytes(tmp_path, width: int) -> tuple[int, int]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(width, "relu", name="a"),
            keras.layers.Dense(width, "tanh", name="b"),
            keras.layers.Dense(1, name="out"),
        ]
    )
    model.compile(keras.optimizers.SGD(0.01, clipnorm=1.0), "mse")
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    callback = tbgrad.TensorBoard(tmp_path / str(width), diagnostics_every=1)
    model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    state = callback.collector.variables
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in state), len(state)


def test_the_persistent_state_grows_with_the_relu_units_not_the_entries(tmp_path):
    small, count = _state_bytes(tmp_path, 4)
    wide, _ = _state_bytes(tmp_path, 512)  # 260k kernel entries instead of 60
    # Per layer a few numbers and a histogram's buckets; per relu unit one
    # "alive" flag (dead units are decided over the epoch): nothing per entry.
    assert wide - small == 512 - 4
    assert small < count * (30 + 2) * 8


def test_memory_rows_are_relative_to_plain_fit_and_the_parameters():
    runs = {
        v: [{"peak_rss_mb": 1000.0 + 10 * i, "rss_before_fit_mb": 700.0, "state_bytes": 0}]
        for i, v in enumerate(MEMORY_VARIANTS)
    }
    rows = {r["variant"]: r for r in _rows(runs)}
    assert rows["fit"]["extra_rise_mb"] == 0.0
    assert rows["fit(A/A)"]["extra_rise_mb"] == 10.0
    assert np.isclose(rows["fit+tbgrad"]["extra_rise_share"], 20 * 2**20 / (parameters() * 4))
    assert parameters() > 20_000_000
    assert "fit+keras_tb" in format_memory_table(list(rows.values()))
