"""Faults: an exception out of fit, a log folder that cannot be written, a
callback reused for another model, an event file cut off mid-record."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tbgrad
from tbgrad import _compat
from tbgrad.eventlog import load_run
from tbgrad.lab import report
from tbgrad.verdict import verdict_of


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, (x[:, 0] > 0).astype("float32")


def _model(prefix="h"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="tanh", name=f"{prefix}1"),
            keras.layers.Dense(1, activation="sigmoid", name=f"{prefix}_out"),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    return model


class Boom(keras.callbacks.Callback):
    """User code that raises in the given step of fit."""

    def __init__(self, at_step):
        super().__init__()
        self.at_step = at_step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.at_step:
            raise RuntimeError("boom")


def _files(folder) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("events.out.*"))}


def _aborted_fit(tmp_path):
    # 4 steps an epoch: raised in epoch 1, with Keras's per-batch writer pushed.
    model, (x, y) = _model(), _data()
    callback = tbgrad.TensorBoard(tmp_path, update_freq=2)
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[callback, Boom(6)])
    return model, callback, x, y


def test_exception_in_user_code_leaves_nothing_of_tbgrad_behind(tmp_path):
    model, callback, x, y = _aborted_fit(tmp_path)
    assert load_run(tmp_path).train.steps("grad_mean_abs/h1") == [0]  # the finished epoch
    seen = int(callback.collector.snapshot_tensors()["seen"])

    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # plain fit, no tbgrad

    assert not _compat.is_update_step_wrapped(model.optimizer)
    wrapped = [m.name for m in model.layers if hasattr(m.activation, _compat.WRAPPED_ACTIVATION)]
    assert not wrapped
    assert int(callback.collector.snapshot_tensors()["seen"]) == seen, "the statistics still run"
    written = _files(tmp_path)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert _files(tmp_path) == written, "a plain fit wrote into tbgrad's run"
    # Keras's default writer (pushed for update_freq=2) is not left behind.
    assert not tf.summary.should_record_summaries()
    # The callback works again in a later fit.
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert load_run(tmp_path).train.steps("grad_mean_abs/h1") == [0, 0]


def test_a_log_folder_that_cannot_be_written_fails_before_the_first_step(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model = _model()
    x, y = _data()
    with pytest.raises(OSError, match=r"cannot write its log folder '.*file/run'") as info:
        model.fit(x, y, epochs=1, verbose=0, callbacks=[tbgrad.TensorBoard(blocker / "run")])
    assert len(str(info.value).splitlines()) == 1
    assert int(model.optimizer.iterations.numpy()) == 0, "a step ran"
    assert not _compat.is_update_step_wrapped(model.optimizer)


def test_a_callback_reused_for_a_second_model_logs_that_model_only(tmp_path):
    x, y = _data()
    callback = tbgrad.TensorBoard(tmp_path / "first")
    _model("a").fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    callback.log_dir = str(tmp_path / "second")
    second = _model("b")
    second.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    run = load_run(tmp_path / "second")
    layers = {tag.split("/", 1)[1] for tag in run.train.plugins if tag.startswith("grad_mean_abs/")}
    assert layers == {"b1", "b_out"}
    assert callback.collector.names == ["b1", "b_out"]


def _records(data: bytes) -> list[tuple[int, int]]:
    # TFRecord framing: 8-byte length, 4-byte CRC, the record, 4-byte CRC.
    out, at = [], 0
    while at < len(data):
        length = int.from_bytes(data[at : at + 8], "little")
        out.append((at, at + 16 + length))
        at += 16 + length
    return out


def test_an_event_file_cut_mid_record_is_read_up_to_its_last_whole_record(tmp_path, plugin_get):
    x, y = _data()
    _model().fit(x, y, epochs=3, verbose=0, callbacks=[tbgrad.TensorBoard(tmp_path / "run")])
    (train,) = (tmp_path / "run" / "train").glob("events.out.*")
    data = train.read_bytes()
    # Cut in the middle of the record with the last epoch's gradient tags.
    start, end = [r for r in _records(data) if b"grad_mean_abs/h1" in data[r[0] : r[1]]][-1]
    train.write_bytes(data[: (start + end) // 2])

    run = load_run(tmp_path / "run")
    assert run.train.steps("grad_mean_abs/h1") == [0, 1]
    assert verdict_of(tmp_path / "run").label
    (summary,) = report.summarize(tmp_path)
    assert set(summary.grad_mean_abs) == {"h1", "h_out"}
    got = plugin_get(tmp_path, "/heatmaps", "run=run/train&stat=grad_mean_abs")
    (heatmap,) = got["runs"]
    assert [len(row) for row in heatmap["values"]] == [2, 2]


class Retrace(keras.callbacks.Callback):
    """User code that retraces the train step inside fit (e.g. after unfreezing)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.model.make_train_function(force=True)


def test_a_retrace_inside_fit_and_two_callbacks_keep_logging(tmp_path):
    x, y = _data()
    first, second = tbgrad.TensorBoard(tmp_path / "a"), tbgrad.TensorBoard(tmp_path / "b")
    model = _model()
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[first, second, Retrace()])
    for run in ("a", "b"):
        assert load_run(tmp_path / run).train.steps("grad_mean_abs/h1") == [0, 1, 2], run
    assert not _compat.is_update_step_wrapped(model.optimizer)


def test_close_after_an_exception_undoes_keras_s_writer_too(tmp_path):
    model, callback, _, _ = _aborted_fit(tmp_path)
    callback.close()
    assert not tf.summary.should_record_summaries()
    assert not _compat.is_update_step_wrapped(model.optimizer)


def test_a_callback_reused_after_an_exception_releases_the_first_model(tmp_path):
    x, y = _data()
    callback = tbgrad.TensorBoard(tmp_path / "first")
    first = _model("a")
    with pytest.raises(RuntimeError, match="boom"):
        first.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[callback, Boom(6)])
    callback.log_dir = str(tmp_path / "second")
    _model("b").fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert not _compat.is_update_step_wrapped(first.optimizer)
    wrapped = [m.name for m in first.layers if hasattr(m.activation, _compat.WRAPPED_ACTIVATION)]
    assert not wrapped
