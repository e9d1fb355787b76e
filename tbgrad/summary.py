"""Writes tbgrad's summaries: the one writer both training paths share.

:class:`SummaryLogger` owns the ``train/`` and ``validation/`` file writers of
a run (created lazily, closed by :meth:`close`) and writes every tag of
:mod:`tbgrad.tags`. Each logging event is a single op, not one per tag.

An epoch's scalars and histograms are computed in numpy from the
accumulator's variables and written as one serialized ``Summary`` proto per
folder by one ``write_raw_pb`` op: nothing to trace. (A compiled function
holding the dozens of histogram and scalar ops took seconds to trace in every
``fit``, for a few milliseconds of work per epoch.) Per-step summaries, which
the tape loop writes from inside its compiled epoch, are one compiled
function.
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
from tbgrad.stats import DEFAULT_BUCKET_COUNT, GradientStats

# How far the event files may lag behind training (TensorFlow's default: 120).
FLUSH_SECONDS = 30


class SummaryLogger:
    """Writes the tag contract of :mod:`tbgrad.tags` for one run.

    Args:
        log_dir: The run folder; ``train/`` and ``validation/`` go under it.
        stats: The gradient accumulator of the model being trained. It may be
            set later (``logger.stats = ...``, before the first epoch is
            written) when the model is built only by its first train step:
            the writers can be used before.
        bucket_count: Histogram buckets.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        stats: GradientStats | None,
        bucket_count: int = DEFAULT_BUCKET_COUNT,
    ):
        self.log_dir = os.fspath(log_dir)
        self.stats = stats
        self._metadata_due = False
        self.bucket_count = bucket_count
        # The EpochValues of the last epoch written.
        self.last_epoch_values = None
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._summaries: dict[tuple, summary_pb2.Summary] = {}
        self._step_fn = tf.function(self._write_step, reduce_retracing=True)

    def writer(self, split: str) -> tf.summary.SummaryWriter:
        """The file writer of ``split`` (``"train"`` or ``"validation"``)."""
        if split not in self._writers:
            # No flush per epoch (an fsync each time would cost more than the
            # summaries), but at most FLUSH_SECONDS behind, so that a live
            # TensorBoard shows a slow run's epochs as they finish; close()
            # flushes the rest.
            self._writers[split] = tf.summary.create_file_writer(
                os.path.join(self.log_dir, split), flush_millis=FLUSH_SECONDS * 1000
            )
            self._metadata_due = self._metadata_due or split == tags.TRAIN_DIR
        if self._metadata_due and self.stats is not None:
            self._metadata_due = False
            train = self._writers[tags.TRAIN_DIR]
            layout.write_layout(train, self.stats.compared_names)  # Custom Scalars charts
            # The layers' order, for the Gradient-flow dashboard.
            dashboard_metadata.write_layers(train, self.stats.names, self.stats.kernel_names)
        return self._writers[split]

    # -- public events ------------------------------------------------------

    def write_epoch(
        self,
        epoch: int,
        train_logs: Mapping[str, float] | None = None,
        val_logs: Mapping[str, float] | None = None,
        histograms: bool = True,
        snapshot: Mapping | None = None,
    ) -> None:
        """Writes an epoch's scalars, gradient and weight summaries.

        Args:
            epoch: The epoch number, the TensorBoard step of every tag.
            train_logs: Metrics of the training data, written as ``epoch_*``.
            val_logs: Metrics of the validation data (without ``val_``).
            histograms: Whether to write the ``gradients/`` and ``weights/``
                histograms this epoch.
            snapshot: The values of ``stats.snapshot_tensors()`` at the end
                of the epoch, as numpy; None reads the variables (eager).
        """
        train = _floats(train_logs)
        val = _floats(val_logs)
        self._write_raw(
            tags.TRAIN_DIR, epoch, self._epoch_values(train, bool(histograms), snapshot)
        )
        if val:
            values = [(tags.epoch_tag(k), v) for k, v in val.items()]
            self._write_raw(tags.VALIDATION_DIR, epoch, values)

    def write_step(self, step: int, batch_logs: Mapping[str, float] | None = None):
        """Writes per-step scalars (``batch_*``) at the global ``step``."""
        with tf.summary.record_if(True):
            self.writer(tags.TRAIN_DIR)
            self._step_fn(
                tf.constant(step, tf.int64),
                _scalars(batch_logs),
            )

    def write_step_in_graph(self, step, batch: Mapping[str, tf.Tensor], when) -> None:
        """Like :meth:`write_step`, from inside a ``tf.function``.

        ``when`` is a boolean tensor: the summaries are recorded only if it is
        true. (A Python ``if`` on a tensor would put the tags under autograph's
        ``cond/`` name scope.) The train writer must have been created
        (:meth:`writer`) eagerly.
        """
        with tf.summary.record_if(when):
            self._write_step(step, dict(batch))

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

    def _epoch_values(self, train: dict[str, float], histograms: bool, snapshot=None):
        # (tag, value): a float for a scalar, a [k, 3] array for a histogram.
        values = [(tags.epoch_tag(k), v) for k, v in train.items()]
        if not self.stats.layers:
            return values
        epoch = self.stats.epoch_values(snapshot, histograms, self.bucket_count)
        self.last_epoch_values = epoch
        if epoch.grad_ratio is not None:
            values.append((tags.GRAD_RATIO, epoch.grad_ratio))
        if epoch.skipped is not None:
            values.append((tags.GRAD_SKIPPED_STEPS, epoch.skipped))
        # The families EpochValues holds: an epoch without an applied step
        # has no gradient families, an epoch without histograms none.
        for i, name in enumerate(self.stats.names):
            for family, column in epoch.scalars.items():
                values.append((tags.layer_tag(family, name), column[i]))
            for family, buckets in epoch.histograms.items():
                values.append((tags.layer_tag(family, name), buckets[i]))
        values += list(epoch.named.items())
        return values

    def write_text(self, tag: str, text: str, step: int) -> None:
        """Writes ``text`` (Markdown) to ``train/`` as a Text-dashboard tag."""
        with tf.summary.record_if(True), self.writer(tags.TRAIN_DIR).as_default():
            tf.summary.text(tag, text, step=step)

    def _write_step(self, step, batch):
        last = self.stats.last_step_tensors()
        with self._writers[tags.TRAIN_DIR].as_default(step=step):
            for name, value in batch.items():
                tf.summary.scalar(tags.batch_tag(name), value)
            for i, layer in enumerate(self.stats.layers):
                tf.summary.scalar(tags.layer_tag(tags.BATCH_GRAD_MEAN_ABS, layer.name), last[i])


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


def _floats(logs: Mapping[str, float] | None) -> dict[str, float]:
    out = {}
    for name, value in (logs or {}).items():
        try:
            out[str(name)] = float(value)
        except (TypeError, ValueError):
            continue  # Keras may put non-scalars in logs; TensorBoard cannot show them.
    return out


def _scalars(logs: Mapping[str, float] | None) -> dict[str, tf.Tensor]:
    return {name: tf.constant(value, tf.float32) for name, value in _floats(logs).items()}
