"""The gradient record: per-layer statistics of every applied gradient.

Exact over every step ``stats_every`` counts (every applied step by
default). The per-layer sums of a step (sum |g|, sum g, sum g^2 and the
non-finite count) are one piece of work that :class:`GradientMoments` and
:class:`GradientNorm` share (:func:`layer_moments`).
"""

from __future__ import annotations

import keras
import numpy as np

from tbgrad import step as _step
from tbgrad import tags
from tbgrad.statistics.base import LAST, MAX, Family, Statistic
from tbgrad.statistics.buckets import step_buckets, to_buckets

# Columns of layer_moments.
MEAN_ABS, STD, NONFINITE, NORM = 0, 1, 2, 3


def layer_moments(step: _step.StepContext):
    """``[layers, 4]`` float32 of the step's gradients: mean |g|, std(g), the
    number of NaN or Inf entries, and the L2 norm, over each gradient's finite
    entries. Computed once per step for every statistic that asks."""
    return step.shared("gradient_moments", lambda: _layer_moments(step))


def _layer_moments(step):
    # Three float32 reductions per gradient, where it lies (stacking
    # gradients copies them); the sum of squares in one pass where the
    # backend has the op (ExecutionPolicy.sums_of_squares). A step whose sums
    # are not finite is recounted over the finite entries in float64
    # (exploding gradients reach 1e20 and more before they turn Inf, and
    # their squares overflow float32).
    grads = step.gradients
    # The variables' sizes: a gradient's static shape can be unknown in a
    # traced loop.
    counts = [int(np.prod(k.shape)) for k in step.kernels]  # exact, also past 2**24
    sizes = np.array(counts, np.float32)
    grads32 = [keras.ops.cast(g, "float32") for g in grads]
    sums = keras.ops.stack(
        [
            keras.ops.stack([keras.ops.sum(keras.ops.abs(g)) for g in grads32]),
            keras.ops.stack([keras.ops.sum(g) for g in grads32]),
            step.policy.sums_of_squares(grads32),
        ],
        axis=1,
    )
    fast = _moments(sums, sizes, sizes)
    finite = keras.ops.all(keras.ops.isfinite(fast))
    return step.cond(finite, lambda: fast, lambda: _finite_moments(grads, counts))


def _moments(sums, counts, sizes):
    # [sum |g|, sum g, sum g^2] over ``counts`` entries -> layer_moments' columns.
    dtype = sums.dtype
    counts = keras.ops.cast(counts, dtype)
    inverse = keras.ops.where(counts > 0, 1.0 / keras.ops.maximum(counts, 1.0), 0.0)
    mean_abs = sums[:, 0] * inverse
    mean = sums[:, 1] * inverse
    std = keras.ops.sqrt(keras.ops.maximum(sums[:, 2] * inverse - mean * mean, 0.0))
    nonfinite = keras.ops.cast(sizes, dtype) - counts
    # The norm before the cast: a recount's squares may be past float32.
    norm = keras.ops.sqrt(sums[:, 2])
    return keras.ops.cast(keras.ops.stack([mean_abs, std, nonfinite, norm], axis=1), "float32")


def _finite_moments(grads, counts):
    if not _step.ON_TENSORFLOW:
        return _finite_moments_each(grads, counts)
    # Every gradient in one flat float64 vector, its sums taken by segment:
    # the fewest ops, which is what tracing this rare branch costs. A
    # gradient's size is read when the branch runs: an embedding's rows are
    # fewer than its variable's entries (the others are zeros, finite).
    held = _sizes(grads)
    flat = keras.ops.concatenate(
        [keras.ops.reshape(keras.ops.cast(g, _step.WIDE_FLOAT), [-1]) for g in grads], axis=0
    )
    finite = keras.ops.isfinite(flat)
    flat = keras.ops.where(finite, flat, 0.0)
    columns = keras.ops.stack(
        [keras.ops.abs(flat), flat, flat * flat, keras.ops.cast(finite, _step.WIDE_FLOAT)], axis=1
    )
    # The segment ids are made when the branch runs: as a constant they
    # would be one int64 per parameter in the graph, copied at every
    # optimisation pass (gigabytes of peak memory on a 20M-parameter model).
    segments = keras.ops.repeat(keras.ops.arange(len(grads), dtype="int32"), held, axis=0)
    sums = keras.ops.segment_sum(columns, segments, len(grads))
    sizes = np.array(counts, np.float64)
    finite_entries = sums[:, 3] + (sizes - keras.ops.cast(held, _step.WIDE_FLOAT))
    return _moments(sums[:, :3], finite_entries, sizes)


def _finite_moments_each(grads, counts):
    # One gradient at a time (JAX, PyTorch): XLA would fold the flat form's
    # segment ids into a constant of one id per parameter, for seconds at
    # every compilation. No gradient is sparse here: its size is its
    # variable's.
    rows = []
    for g in grads:
        x = keras.ops.reshape(keras.ops.cast(g, _step.WIDE_FLOAT), [-1])
        finite = keras.ops.isfinite(x)
        x = keras.ops.where(finite, x, 0.0)
        parts = [keras.ops.abs(x), x, x * x, keras.ops.cast(finite, _step.WIDE_FLOAT)]
        rows.append(keras.ops.stack([keras.ops.sum(part) for part in parts]))
    sums = keras.ops.stack(rows)
    return _moments(sums[:, :3], sums[:, 3], np.array(counts, np.float64))


def _sizes(grads):
    # Each gradient's number of entries: numpy where every shape is known,
    # else read when the step runs.
    shapes = [tuple(g.shape) for g in grads]
    if all(d is not None for shape in shapes for d in shape):
        return np.array([int(np.prod(shape)) for shape in shapes], np.int64)
    return keras.ops.stack([keras.ops.cast(keras.ops.size(g), _step.WIDE_INT) for g in grads])


def found_record(values, names, what: str) -> dict | None:
    """``{"what", "layer", "step"}`` of a ``found_at`` state's numpy value,
    or None when nothing was found."""
    index, layer = (int(v) for v in values)
    return None if index < 0 else {"what": what, "layer": names[layer], "step": index}


def first_found(old, new):
    """Keeps the first ``[step index, layer]`` found (``-1`` when none)."""
    return keras.ops.where(keras.ops.logical_and(old[0] < 0, new[0] >= 0), new, old)


def found_at(index, bad):
    """``[index, first bad layer]`` where any of ``bad`` holds, else ``[-1, -1]``."""
    layer = keras.ops.argmax(keras.ops.cast(bad, "int32"))
    value = keras.ops.stack(
        [keras.ops.cast(index, _step.WIDE_INT), keras.ops.cast(layer, _step.WIDE_INT)]
    )
    return keras.ops.where(keras.ops.any(bad), value, keras.ops.full([2], -1, _step.WIDE_INT))


class GradientMoments(Statistic):
    """Mean |g|, std(g), non-finite entries and the per-step peak of mean |g|,
    per layer, over the epoch's counted steps; the first non-finite gradient."""

    families = (
        Family(
            tags.GRAD_MEAN_ABS,
            "mean \\|g\\| of the gradient, averaged over every step of the epoch",
            boards="Scalars, Gradient flow",
            scale="log",
        ),
        Family(
            tags.GRAD_STD,
            "standard deviation of the gradient, averaged over the epoch's steps",
            boards="Scalars, Gradient flow",
            scale="log",
        ),
        Family(
            tags.GRAD_MEAN_ABS_MAX,
            "the epoch's largest per-step mean \\|g\\|: spikes the epoch mean hides",
            boards="Scalars, Gradient flow",
            scale="log",
            explains=True,
        ),
        Family(
            tags.GRAD_NONFINITE,
            "NaN or Inf gradient entries in the epoch",
            scale="linear",
        ),
        Family(
            tags.FIRST_NONFINITE,
            "the first step and layer whose gradient or weights turned NaN or Inf",
            kind="text",
            per_layer=False,
            when="once",
            boards="Text",
            condition="nonfinite",
        ),
    )

    def __init__(self, setup):
        super().__init__(setup)
        n = len(setup.layers)
        self.add_state("sums", [n, 3])
        self.add_state("last", [n], combine=LAST)
        self.add_state("peak", [n], combine=MAX)
        self.add_state("steps", [], _step.WIDE_INT)
        self.add_state("first_bad", [2], _step.WIDE_INT, combine=first_found, initial=-1)

    def update(self, step, carry=None):
        moments = layer_moments(step)
        return {
            "sums": moments[:, :3],
            "last": moments[:, MEAN_ABS],
            "peak": moments[:, MEAN_ABS],
            "steps": keras.ops.ones([], _step.WIDE_INT),
            "first_bad": found_at(step.index, moments[:, NONFINITE] > 0),
        }

    def result(self, values, epoch):
        steps = int(values["steps"])
        if steps == 0:
            # No gradient applied (every step skipped): nothing rather than
            # zeros that would read as a dead gradient.
            return {}
        sums = np.asarray(values["sums"], np.float32)
        n = np.float32(steps)
        out = epoch.per_layer(tags.GRAD_MEAN_ABS, sums[:, MEAN_ABS] / n)
        out.update(epoch.per_layer(tags.GRAD_STD, sums[:, STD] / n))
        out.update(epoch.per_layer(tags.GRAD_NONFINITE, sums[:, NONFINITE]))
        out.update(epoch.per_layer(tags.GRAD_MEAN_ABS_MAX, np.asarray(values["peak"])))
        return out

    def step_result(self):
        last = _step.read(self.state("last"))
        return {
            tags.layer_tag(tags.BATCH_GRAD_MEAN_ABS, name): last[i]
            for i, name in enumerate(self.setup.names)
        }

    def first_nonfinite(self, values, epoch):
        return found_record(values["first_bad"], self.setup.names, "gradient")


class GradientNorm(Statistic):
    """The L2 norm of each layer's gradient and of all tracked gradients
    together, per step: the epoch's mean and largest."""

    families = (
        Family(
            tags.GRAD_NORM,
            "L2 norm of the gradient (finite entries), averaged over the epoch's steps; "
            "its largest",
            boards="Scalars, Gradient flow",
            scale="log",
            row=f"`{tags.TRAIN_DIR}/{tags.GRAD_NORM}/<layer>`, "
            f"`{tags.TRAIN_DIR}/{tags.GRAD_NORM_MAX}/<layer>`",
        ),
        Family(tags.GRAD_NORM_MAX, "", scale="log", row=""),
        Family(
            tags.GRAD_GLOBAL_NORM,
            "the same, of every tracked gradient together",
            per_layer=False,
            row=f"`{tags.TRAIN_DIR}/{tags.GRAD_GLOBAL_NORM}`, "
            f"`{tags.TRAIN_DIR}/{tags.GRAD_GLOBAL_NORM_MAX}`",
        ),
        Family(tags.GRAD_GLOBAL_NORM_MAX, "", per_layer=False, row=""),
    )

    def __init__(self, setup):
        super().__init__(setup)
        n = len(setup.layers) + 1
        self.add_state("sums", [n])
        self.add_state("peak", [n], combine=MAX)
        self.add_state("steps", [], _step.WIDE_INT)

    def update(self, step, carry=None):
        norms = layer_moments(step)[:, NORM]
        # The norm of the norms, scaled by the largest: no square overflows.
        scale = keras.ops.max(norms)
        inverse = keras.ops.where(scale > 0, 1.0 / keras.ops.maximum(scale, 1e-30), 0.0)
        total = scale * keras.ops.sqrt(keras.ops.sum(keras.ops.square(norms * inverse)))
        norms = keras.ops.concatenate([norms, keras.ops.reshape(total, [1])], axis=0)
        return {"sums": norms, "peak": norms, "steps": keras.ops.ones([], _step.WIDE_INT)}

    def result(self, values, epoch):
        steps = int(values["steps"])
        if steps == 0:
            return {}
        mean = np.asarray(values["sums"], np.float64) / steps
        peak = np.asarray(values["peak"], np.float64)
        out = epoch.per_layer(tags.GRAD_NORM, mean[:-1])
        out.update(epoch.per_layer(tags.GRAD_NORM_MAX, peak[:-1]))
        out[tags.GRAD_GLOBAL_NORM] = mean[-1]
        out[tags.GRAD_GLOBAL_NORM_MAX] = peak[-1]
        return out


class GradientHistogram(Statistic):
    """The buckets of each layer's gradient in the epoch's first step."""

    families = (
        Family(
            tags.GRADIENTS,
            "the gradient the optimizer applied in the epoch's first step (finite entries)",
            kind="histogram",
            boards="Histograms, Distributions",
        ),
    )
    cadence = _step.HISTOGRAM

    def __init__(self, setup):
        super().__init__(setup)
        self.add_state(
            "buckets", [len(setup.layers), setup.bucket_count + 2], _step.WIDE_FLOAT, LAST
        )
        self.add_state("steps", [], _step.WIDE_INT)

    def update(self, step, carry=None):
        k = self.setup.bucket_count
        rows = keras.ops.stack(
            [step_buckets(g, k, zeros=z) for g, z in zip(step.gradients, step.absent)]
        )
        return {"buckets": rows, "steps": keras.ops.ones([], _step.WIDE_INT)}

    def result(self, values, epoch):
        if not epoch.histograms or int(values["steps"]) == 0:
            return {}
        k = self.setup.bucket_count
        rows = [to_buckets(row, k) for row in np.asarray(values["buckets"])]
        return epoch.per_layer(tags.GRADIENTS, rows)


class GradientRatio(Statistic):
    """Each layer's mean |g| against the output layer's (the matrix that
    produces the model's output: :attr:`Setup.reference`)."""

    families = (
        Family(
            tags.GRAD_LOG10_RATIO,
            f"log10 of the layer's `{tags.GRAD_MEAN_ABS}` over the output layer's (the "
            "matrix that produces the model's output): 0 as strong, -1 ten times weaker",
            boards="Custom Scalars, Scalars, Gradient flow",
            scale="linear",
        ),
        Family(
            tags.GRAD_RATIO,
            f"`{tags.GRAD_MEAN_ABS}` of the first weight matrix over the output layer's",
            per_layer=False,
            condition="two kernels",
        ),
    )
    cadence = _step.EPOCH

    @classmethod
    def wanted(cls, setup):
        return setup.reference is not None

    def result(self, values, epoch):
        names = epoch.setup.names
        found = [epoch.results.get(tags.layer_tag(tags.GRAD_MEAN_ABS, n)) for n in names]
        if any(value is None for value in found):
            return {}
        mean_abs = np.asarray(found, np.float32)
        compared = epoch.setup.compared_at
        reference = compared[-1]
        out = epoch.per_layer(tags.GRAD_LOG10_RATIO, log10_ratio(mean_abs, reference))
        if len(compared) >= 2:
            first, last = mean_abs[compared[0]], mean_abs[reference]
            out[tags.GRAD_RATIO] = float(first / last) if last != 0 else 0.0
        return out


def log10_ratio(mean_abs, reference: int) -> np.ndarray:
    """log10 of each layer's mean |g| over layer ``reference``'s.

    A layer whose gradient is exactly 0 gets -inf (0 / 0: NaN): what it is,
    rather than a floor that would read as a measured value.
    """
    mean_abs = np.asarray(mean_abs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(mean_abs / mean_abs[reference])


class SkippedSteps(Statistic):
    """Steps a LossScaleOptimizer skipped (non-finite after loss scaling),
    counted by the collector outside the update step."""

    families = (
        Family(
            tags.GRAD_SKIPPED_STEPS,
            "steps the optimizer skipped (non-finite after loss scaling); the gradient tags "
            "cover the applied steps only",
            per_layer=False,
            when="every epoch, with a `LossScaleOptimizer`",
            condition="skips",
        ),
    )
    cadence = _step.EPOCH

    @classmethod
    def wanted(cls, setup):
        return bool(setup.layers) and setup.count_skips

    def result(self, values, epoch):
        return {} if epoch.skipped is None else {tags.GRAD_SKIPPED_STEPS: epoch.skipped}
