"""Writes tbgrad's summaries: the one writer both training paths share.

:class:`SummaryLogger` owns the ``train/`` and ``validation/`` file writers of
a run (created lazily, closed by :meth:`close`) and writes every tag of
:mod:`tbgrad.tags`. Each logging event is a single call of a compiled
function, so an epoch's dozens of histograms and scalars cost one dispatch
rather than one eager op per tag.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import tensorflow as tf
from tensorboard.plugins.histogram import metadata as histogram_metadata

from tbgrad import layout, tags
from tbgrad.stats import GradientStats

# TensorBoard's own default (tensorboard/plugins/histogram/summary_v2.py).
DEFAULT_BUCKET_COUNT = 30


class SummaryLogger:
    """Writes the tag contract of :mod:`tbgrad.tags` for one run.

    Args:
        log_dir: The run folder; ``train/`` and ``validation/`` go under it.
        stats: The gradient accumulator of the model being trained.
        bucket_count: Histogram buckets.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        stats: GradientStats,
        bucket_count: int = DEFAULT_BUCKET_COUNT,
    ):
        self.log_dir = os.fspath(log_dir)
        self.stats = stats
        self.bucket_count = bucket_count
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._epoch_fn = tf.function(self._write_epoch, reduce_retracing=True)
        self._step_fn = tf.function(self._write_step, reduce_retracing=True)

    def writer(self, split: str) -> tf.summary.SummaryWriter:
        """The file writer of ``split`` (``"train"`` or ``"validation"``)."""
        if split not in self._writers:
            # Never flush on a timer mid-epoch; close() and flush() do it.
            self._writers[split] = tf.summary.create_file_writer(
                os.path.join(self.log_dir, split), flush_millis=10**9
            )
            if split == tags.TRAIN_DIR:
                layout.write_layout(self._writers[split])  # Custom Scalars charts
        return self._writers[split]

    # -- public events ------------------------------------------------------

    def write_epoch(
        self,
        epoch: int,
        train_logs: Mapping[str, float] | None = None,
        val_logs: Mapping[str, float] | None = None,
        histograms: bool = True,
    ) -> None:
        """Writes an epoch's scalars, gradient and weight summaries.

        Args:
            epoch: The epoch number, the TensorBoard step of every tag.
            train_logs: Metrics of the training data, written as ``epoch_*``.
            val_logs: Metrics of the validation data (without ``val_``).
            histograms: Whether to write the ``gradients/`` and ``weights/``
                histograms this epoch.
        """
        train = _scalars(train_logs)
        val = _scalars(val_logs)
        self.writer(tags.TRAIN_DIR)
        if val:
            self.writer(tags.VALIDATION_DIR)
        # Keras 3 drops epoch summaries when an integer update_freq leaves
        # record_if false at epoch end (tensorflow/tensorboard#4975): always
        # record ours.
        with tf.summary.record_if(True):
            self._epoch_fn(
                tf.constant(epoch, tf.int64),
                train,
                val,
                bool(histograms),
            )

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
        # The compiled bodies hold the closed writers' resources: retrace.
        self._epoch_fn = tf.function(self._write_epoch, reduce_retracing=True)
        self._step_fn = tf.function(self._write_step, reduce_retracing=True)

    # -- compiled bodies ----------------------------------------------------

    def _write_epoch(self, step, train, val, histograms):
        stats = self.stats.epoch_tensors()
        with self._writers[tags.TRAIN_DIR].as_default(step=step):
            for name, value in train.items():
                tf.summary.scalar(tags.epoch_tag(name), value)
            if len(self.stats.layers) >= 2:
                mean_abs = stats[tags.GRAD_MEAN_ABS]
                tf.summary.scalar(tags.GRAD_RATIO, tf.math.divide_no_nan(mean_abs[0], mean_abs[-1]))
            for i, layer in enumerate(self.stats.layers):
                kernel = tf.convert_to_tensor(layer.kernel)
                for family in (tags.GRAD_MEAN_ABS, tags.GRAD_STD, tags.GRAD_NONFINITE):
                    tf.summary.scalar(tags.layer_tag(family, layer.name), stats[family][i])
                tf.summary.scalar(
                    tags.layer_tag(tags.WEIGHT_MEAN, layer.name), tf.reduce_mean(kernel)
                )
                tf.summary.scalar(
                    tags.layer_tag(tags.WEIGHT_STD, layer.name), tf.math.reduce_std(kernel)
                )
                tf.summary.scalar(
                    tags.layer_tag(tags.WEIGHT_L1, layer.name),
                    tf.reduce_sum(tf.abs(kernel)),
                )
                if histograms:
                    grad = self.stats.captured_gradients()[i]
                    _histogram(
                        tags.layer_tag(tags.GRADIENTS, layer.name),
                        grad,
                        self.bucket_count,
                    )
                    _histogram(
                        tags.layer_tag(tags.WEIGHTS, layer.name),
                        kernel,
                        self.bucket_count,
                    )
        if val:
            with self._writers[tags.VALIDATION_DIR].as_default(step=step):
                for name, value in val.items():
                    tf.summary.scalar(tags.epoch_tag(name), value)

    def _write_step(self, step, batch):
        last = self.stats.last_step_tensors()
        with self._writers[tags.TRAIN_DIR].as_default(step=step):
            for name, value in batch.items():
                tf.summary.scalar(tags.batch_tag(name), value)
            for i, layer in enumerate(self.stats.layers):
                tf.summary.scalar(tags.layer_tag(tags.BATCH_GRAD_MEAN_ABS, layer.name), last[i])


def histogram_buckets(data, bucket_count: int = DEFAULT_BUCKET_COUNT) -> tf.Tensor:
    """Buckets the finite entries of ``data`` as TensorBoard's histograms do.

    Returns a float64 ``[bucket_count, 3]`` tensor of (left edge, right edge,
    count), the format of ``tensorboard.plugins.histogram`` summaries: equal
    buckets from the minimum to the maximum, the maximum in the last bucket.
    NaN and Inf entries are left out (``grad_nonfinite`` counts them).

    ``tf.summary.histogram`` builds the same buckets through two nested
    ``tf.cond``s and a [size, bucket_count] one-hot matrix per tensor; with
    dozens of tensors per epoch that took seconds to trace and milliseconds
    per epoch to run. ``tf.histogram_fixed_width`` is one kernel and no cond.
    """
    x = tf.reshape(tf.cast(data, tf.float64), [-1])
    x = tf.boolean_mask(x, tf.math.is_finite(x))
    n = tf.size(x)
    empty = tf.equal(n, 0)
    lo = tf.where(empty, tf.constant(0.0, tf.float64), tf.reduce_min(x))
    hi = tf.where(empty, tf.constant(0.0, tf.float64), tf.reduce_max(x))
    # histogram_fixed_width needs lo < hi; a single distinct value (or no
    # value) gets a unit range for counting while its edges stay at lo.
    counts = tf.histogram_fixed_width(
        x, tf.stack([lo, tf.where(hi > lo, hi, lo + 1.0)]), nbins=bucket_count
    )
    edges = tf.linspace(lo, hi, bucket_count + 1)
    return tf.stack([edges[:-1], edges[1:], tf.cast(counts, tf.float64)], axis=1)


_HISTOGRAM_METADATA = histogram_metadata.create_summary_metadata(
    display_name=None, description=None
)


def _histogram(tag: str, data, bucket_count: int) -> None:
    tf.summary.write(
        tag=tag,
        tensor=histogram_buckets(data, bucket_count),
        metadata=_HISTOGRAM_METADATA,
    )


def _scalars(logs: Mapping[str, float] | None) -> dict[str, tf.Tensor]:
    out = {}
    for name, value in (logs or {}).items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue  # Keras may put non-scalars in logs; TensorBoard cannot show them.
        out[str(name)] = tf.constant(value, tf.float32)
    return out
