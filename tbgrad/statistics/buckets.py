"""TensorBoard's histogram buckets, on the host and inside the train step.

Both bucket a tensor's finite entries as ``tf.summary.histogram`` does:
equal buckets from the minimum to the maximum, the maximum in the last
bucket (an entry's bucket is ``floor(bucket_count * (x - lo) / (hi - lo))``,
clipped to the last one), and one value alone in the last bucket. In float64
the two give identical counts.
"""

from __future__ import annotations

import keras
import numpy as np

from tbgrad import step as _step

# TensorBoard's own default (tensorboard/plugins/histogram/summary_v2.py).
DEFAULT_BUCKET_COUNT = 30


def histogram_buckets(data, bucket_count: int = DEFAULT_BUCKET_COUNT) -> np.ndarray:
    """The float64 ``[bucket_count, 3]`` (left edge, right edge, count) of the
    finite entries of ``data``, in numpy; NaN and Inf entries are left out."""
    x = np.asarray(data, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    if not finite.all():
        x = x[finite]
    lo = float(x.min()) if x.size else 0.0
    hi = float(x.max()) if x.size else 0.0
    span = hi - lo if hi > lo else 1.0
    index = np.floor((x - lo) / span * bucket_count).astype(np.int64)
    counts = np.bincount(np.clip(index, 0, bucket_count - 1), minlength=bucket_count)
    return to_buckets(np.concatenate([[lo, hi], counts]), bucket_count)


def step_buckets(x, bucket_count: int, dtype=None, zeros=0):
    """``[lo, hi, count_1..count_k]`` of the finite entries of ``x`` and
    ``zeros`` more entries equal to 0 (the rows an embedding's sparse
    gradient leaves out), in the train step (a segment sum, which XLA
    compiles; a histogram op it does not)."""
    dtype = dtype or _step.WIDE_FLOAT
    x = keras.ops.reshape(keras.ops.cast(x, dtype), [-1])
    finite = keras.ops.isfinite(x)
    lo = keras.ops.min(keras.ops.where(finite, x, np.inf))
    hi = keras.ops.max(keras.ops.where(finite, x, -np.inf))
    sparse = not (isinstance(zeros, int) and zeros == 0)
    if sparse:
        zeros = keras.ops.cast(zeros, dtype)
        lo = keras.ops.where(zeros > 0, keras.ops.minimum(lo, 0.0), lo)
        hi = keras.ops.where(zeros > 0, keras.ops.maximum(hi, 0.0), hi)
    some = lo <= hi
    lo = keras.ops.where(some, lo, 0.0)
    hi = keras.ops.where(some, hi, 0.0)
    span = keras.ops.where(hi > lo, hi - lo, 1.0)

    def bucket(v):
        scaled = (v - lo) / span * bucket_count
        return keras.ops.clip(keras.ops.cast(keras.ops.floor(scaled), "int32"), 0, bucket_count - 1)

    index = bucket(keras.ops.where(finite, x, lo))
    counts = keras.ops.segment_sum(keras.ops.cast(finite, dtype), index, bucket_count)
    if sparse:
        counts = (
            counts
            + keras.ops.one_hot(bucket(keras.ops.zeros([], dtype)), bucket_count, dtype=dtype)
            * zeros
        )
    return keras.ops.concatenate([keras.ops.stack([lo, hi]), counts], axis=0)


def float32_buckets(step, x, bucket_count: int):
    """:func:`step_buckets` of ``x`` in float32, in a few passes where the
    backend has a histogram op (:meth:`ExecutionPolicy.bucket_counts`): its
    minimum, maximum and sum, and the op where the sum is finite (no NaN or
    Inf) and the entries differ; the full form otherwise. The two may put an
    entry on a bucket's edge in either bucket (float32 either way)."""
    x = keras.ops.reshape(keras.ops.cast(x, "float32"), [-1])
    if not step.policy.has_bucket_counts:
        return step_buckets(x, bucket_count, "float32")
    lo, hi = keras.ops.min(x), keras.ops.max(x)
    # The op only where it is defined: a NaN entry, or lo == hi (a zero
    # bucket width), would give it no bucket to count in.
    plain = keras.ops.logical_and(keras.ops.isfinite(keras.ops.sum(x)), lo < hi)

    def counted():
        counts = step.policy.bucket_counts(x, lo, hi, bucket_count)
        return keras.ops.concatenate([keras.ops.stack([lo, hi]), counts], axis=0)

    return step.cond(plain, counted, lambda: step_buckets(x, bucket_count, "float32"))


def to_buckets(row, bucket_count: int) -> np.ndarray:
    """The ``[bucket_count, 3]`` histogram of a :func:`step_buckets` row."""
    row = np.asarray(row, np.float64)
    counts = row[2:]
    if row[0] == row[1]:
        # One value (a bias still at zero): TensorBoard's edges are all that
        # value and the count is in the last bucket.
        counts = np.zeros_like(counts)
        counts[-1] = row[2:].sum()
        return np.stack([np.full_like(counts, row[0]), np.full_like(counts, row[1]), counts], 1)
    edges = np.linspace(row[0], row[1], bucket_count + 1)
    edges[-1] = row[1]
    return np.stack([edges[:-1], edges[1:], counts], axis=1)
