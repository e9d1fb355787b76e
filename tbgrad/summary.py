"""Writes tbgrad's summaries: the one writer every training path shares.

:class:`SummaryLogger` owns the ``train/`` and ``validation/`` file writers of
a run (created lazily, closed by :meth:`close`) and serialises what it is
handed: an epoch's ``{tag: value}`` (from :meth:`tbgrad.collector.Collector.epoch`)
as one ``Summary`` proto per folder, written by one ``write_raw_pb`` op, so
there is nothing to trace; per-step scalars as one compiled function. It
computes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata

from tbgrad import _compat, layout, tags
from tbgrad.dashboard import metadata as dashboard_metadata

# How far the event files may lag behind training (TensorFlow's default: 120).
FLUSH_SECONDS = 30


class SummaryLogger:
    """Writes the tag contract of :mod:`tbgrad.tags` for one run.

    Args:
        log_dir: The run folder; ``train/`` and ``validation/`` go under it.
    """

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = os.fspath(log_dir)
        # The run's layers, written once the train writer exists.
        self._run_layers: tuple | None = None
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._summaries: dict[tuple, summary_pb2.Summary] = {}
        self._step_fn = tf.function(self._write_step, reduce_retracing=True)

    def describe_run(self, names: list[str], kernel_names: list[str], compared: list[str]) -> None:
        """The run's tracked variables (in layer order), its kernels and the
        layers compared with the output layer: written once to ``train/``
        for the Custom Scalars layout and the Gradient-flow tab."""
        self._run_layers = (list(names), list(kernel_names), list(compared))
        if tags.TRAIN_DIR in self._writers:
            self._write_run_layers()

    def _write_run_layers(self) -> None:
        names, kernel_names, compared = self._run_layers
        self._run_layers = None
        train = self._writers[tags.TRAIN_DIR]
        # Eagerly, also when the model is first built inside a traced train
        # step: written once, not by every step.
        with tf.init_scope():
            layout.write_layout(train, compared)  # Custom Scalars charts
            dashboard_metadata.write_layers(train, names, kernel_names)

    def writer(self, split: str) -> tf.summary.SummaryWriter:
        """The file writer of ``split`` (``"train"`` or ``"validation"``)."""
        if split not in self._writers:
            # The loggers flush at each epoch's end (a killed process keeps
            # every finished epoch); within an epoch the writer is at most
            # FLUSH_SECONDS behind; close() flushes the rest.
            self._writers[split] = tf.summary.create_file_writer(
                os.path.join(self.log_dir, split), flush_millis=FLUSH_SECONDS * 1000
            )
            if split == tags.TRAIN_DIR and self._run_layers is not None:
                self._write_run_layers()
        return self._writers[split]

    # -- public events ------------------------------------------------------

    def write_epoch(
        self,
        epoch: int,
        train_logs: Mapping[str, float] | None = None,
        val_logs: Mapping[str, float] | None = None,
        values: Mapping[str, object] | None = None,
    ) -> None:
        """Writes an epoch's scalars and the statistics' tags.

        Args:
            epoch: The epoch number, the TensorBoard step of every tag.
            train_logs: Metrics of the training data, written as ``epoch_*``.
            val_logs: Metrics of the validation data (without ``val_``).
            values: ``{tag: value}`` for ``train/``: a float for a scalar, a
                ``[k, 3]`` array for a histogram.
        """
        train = [(tags.epoch_tag(k), v) for k, v in float_logs(train_logs).items()]
        self._write_raw(tags.TRAIN_DIR, epoch, train + list((values or {}).items()))
        val = float_logs(val_logs)
        if val:
            values = [(tags.epoch_tag(k), v) for k, v in val.items()]
            self._write_raw(tags.VALIDATION_DIR, epoch, values)

    def write_step(self, step: int, scalars: Mapping[str, object]) -> None:
        """Writes ``{tag: value}`` scalars at the global ``step`` (eagerly)."""
        with tf.summary.record_if(True):
            self.writer(tags.TRAIN_DIR)
            values = {tag: tf.cast(value, tf.float32) for tag, value in scalars.items()}
            self._step_fn(tf.constant(step, tf.int64), values)

    def write_step_in_graph(self, step, scalars: Mapping[str, tf.Tensor], when) -> None:
        """Like :meth:`write_step`, from inside a ``tf.function``.

        ``when`` is a boolean tensor: the summaries are recorded only if it is
        true. (A Python ``if`` on a tensor would put the tags under autograph's
        ``cond/`` name scope.) The train writer must have been created
        (:meth:`writer`) eagerly.
        """
        with tf.summary.record_if(when):
            self._write_step(step, dict(scalars))

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flushes and closes every writer; safe to call twice."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        # The compiled body holds the closed writers' resources: retrace.
        self._step_fn = tf.function(self._write_step, reduce_retracing=True)

    # -- compiled bodies ----------------------------------------------------

    def _write_raw(self, split: str, step: int, values) -> None:
        data = tf.constant(self._serialize(split, values))
        writer = self.writer(split)
        if _compat.write_raw_summary(writer, step, data):
            return
        # Keras 3 drops epoch summaries when an integer update_freq leaves
        # record_if false at epoch end (tensorflow/tensorboard#4975): always
        # record ours.
        with tf.summary.record_if(True), writer.as_default():
            tf.summary.experimental.write_raw_pb(data, step=step)

    def _serialize(self, split: str, values) -> bytes:
        # The same tags come every epoch: the Summary built for the first is
        # kept and only its numbers are replaced, which costs a fraction of
        # building ~100 Value protos (with their plugin metadata) anew.
        key = (split, tuple((tag, np.shape(value)) for tag, value in values))
        summary = self._summaries.get(key)
        if summary is None:
            summary = summary_pb2.Summary(
                value=[
                    _scalar_value(tag, value)
                    if np.ndim(value) == 0
                    else _histogram_value(tag, value)
                    for tag, value in values
                ]
            )
            self._summaries[key] = summary
        else:
            for proto, (_, value) in zip(summary.value, values):
                if np.ndim(value) == 0:
                    proto.tensor.float_val[0] = _float32(value)
                else:
                    proto.tensor.tensor_content = _f8_bytes(value)
        return summary.SerializeToString()

    def write_text(self, tag: str, text: str, step: int) -> None:
        """Writes ``text`` (Markdown) to ``train/`` as a Text-dashboard tag."""
        with tf.summary.record_if(True), self.writer(tags.TRAIN_DIR).as_default():
            tf.summary.text(tag, text, step=step)

    def _write_step(self, step, scalars):
        with self._writers[tags.TRAIN_DIR].as_default(step=step):
            for tag, value in scalars.items():
                tf.summary.scalar(tag, value)


_HISTOGRAM_METADATA = histogram_metadata.create_summary_metadata(
    display_name=None, description=None
)
_SCALAR_METADATA = scalar_metadata.create_summary_metadata(display_name=None, description=None)


# The protos are built directly: tensor_util.make_tensor_proto's generic
# conversion was a third of the time of an epoch's write.
def _scalar_value(tag: str, value) -> summary_pb2.Summary.Value:
    # What tf.summary.scalar writes: a float32 scalar tensor, scalars plugin.
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        float_val=[_float32(value)],
    )
    return summary_pb2.Summary.Value(tag=tag, metadata=_SCALAR_METADATA, tensor=tensor)


def _histogram_value(tag: str, buckets: np.ndarray) -> summary_pb2.Summary.Value:
    # What tf.summary.histogram writes: float64 [k, 3], histograms plugin.
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in buckets.shape]
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_DOUBLE,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims),
        tensor_content=_f8_bytes(buckets),
    )
    return summary_pb2.Summary.Value(tag=tag, metadata=_HISTOGRAM_METADATA, tensor=tensor)


def _float32(value) -> float:
    return float(np.float32(value))


def _f8_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f8").tobytes()


def float_logs(logs: Mapping[str, float] | None) -> dict[str, float]:
    """The logs' scalar values as floats (Keras may put non-scalars in them)."""
    out = {}
    for name, value in (logs or {}).items():
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError):
            continue  # Keras may put non-scalars in logs; TensorBoard cannot show them.
    return out
