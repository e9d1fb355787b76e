"""How far each optimizer step moves the weights: ||w_after - w_before|| / ||w_before||.

``w_before`` is read where the optimizer has clipped the gradients and is
about to apply weight decay, ``w_after`` once its update step has run: the
ratio is the optimizer's whole move, whatever the optimizer, learning-rate
schedule, weight decay, clipping or loss scaling. Constraints Keras applies
after the update (``kernel_constraint``) are not part of it.

CS231n's rule of thumb puts a healthy ratio near 1e-3
(:data:`REFERENCE_UPDATE_RATIO`): far below, the layer hardly learns; far
above, the step is too large for it.
"""

from __future__ import annotations

import keras
import numpy as np

from tbgrad import step as _step
from tbgrad import tags
from tbgrad.statistics.base import Family, Statistic
from tbgrad.statistics.gradients import first_found, found_at, found_record
from tbgrad.variables import is_embedding

# The rule of thumb (cs231n.github.io/neural-networks-3, "Ratio of weights:
# updates"): updates about a thousandth of the weights.
REFERENCE_UPDATE_RATIO = 1e-3


class UpdateRatio(Statistic):
    """Each tracked variable's update-to-weight ratio (embeddings aside),
    averaged over the measured steps; the first weight an update turned NaN
    or Inf."""

    families = (
        Family(
            tags.UPDATE_RATIO,
            "\\|\\|Δw\\|\\| / \\|\\|w\\|\\| per step, epoch mean (near 1e-3 is usual; "
            "not for embeddings)",
            boards="Scalars, Gradient flow",
            scale="log",
            explains=True,
        ),
    )
    cadence = _step.DIAGNOSTICS
    after_update = True
    diagnostic = True

    @classmethod
    def wanted(cls, setup):
        others = any(not is_embedding(layer.kernel) for layer in setup.layers)
        return others and super().wanted(setup)

    def __init__(self, setup):
        super().__init__(setup)
        # Not an embedding: its ratio would hold a copy of the whole matrix
        # (a vocabulary's rows) at every measured step, for rows a batch
        # mostly leaves alone.
        self.at = [i for i, layer in enumerate(setup.layers) if not is_embedding(layer.kernel)]
        self.names = [setup.names[i] for i in self.at]
        self.add_state("sums", [len(self.at)])
        self.add_state("steps", [], _step.WIDE_INT)
        self.add_state("first_bad", [2], _step.WIDE_INT, combine=first_found, initial=-1)

    def before(self, step):
        # A read is a snapshot: TensorFlow copies a variable's buffer before
        # an update writes into it while a read still holds it.
        at = set(self.at)
        return [
            keras.ops.cast(k, "float32") if i in at else keras.ops.zeros([0], "float32")
            for i, k in enumerate(step.kernels)
        ]

    def update(self, step, carry=None):
        if carry is None:
            return {}  # gradients handed over without an optimizer step
        kernels = [keras.ops.cast(step.kernels[i], "float32") for i in self.at]
        befores = [carry[i] for i in self.at]
        moved = _norms(step, [after - before for after, before in zip(kernels, befores)])
        size = _norms(step, befores)
        # A weight turned NaN or Inf makes its move NaN or Inf, and the
        # move's scaled norm NaN (see _norms); the ratio reads NaN then,
        # whatever its largest entry reads.
        bad = keras.ops.logical_not(keras.ops.isfinite(moved[:, 1]))
        ratio = _ratio(moved, size)
        return {
            "sums": keras.ops.where(bad, np.nan, ratio),
            "steps": keras.ops.ones([], _step.WIDE_INT),
            "first_bad": found_at(step.index, bad),
        }

    def result(self, values, epoch):
        steps = int(values["steps"])
        if steps == 0:
            return {}
        sums = np.asarray(values["sums"], dtype=np.float64)
        return epoch.per_layer(tags.UPDATE_RATIO, sums / steps, self.names)

    def first_nonfinite(self, values, epoch):
        return found_record(values["first_bad"], self.names, "weight")


# Below this norm a float32 sum of squares may have lost entries to
# flushing (squares under 1.2e-38 read as 0); above it, even 1e12 such
# entries would be about a millionth of the sum (1.2e-26 of at least 1e-20).
_SMALLEST_PLAIN_NORM = 1e-10


def _norms(step, xs):
    """``[len(xs), 2]``: each ``||x||`` as (scale, ``||x / scale||``), two
    float32 numbers whose product is the norm and neither of which
    overflows or underflows where ``||x||^2`` would; the second is NaN where
    ``x`` holds a NaN or an Inf.

    Plain norms (one pass each, scale 1) when every one is finite and above
    :data:`_SMALLEST_PLAIN_NORM`; else each taken of its vector divided by
    its largest entry.
    """
    plain = keras.ops.sqrt(step.policy.sums_of_squares(xs))
    usable = keras.ops.all(
        keras.ops.logical_and(keras.ops.isfinite(plain), plain > _SMALLEST_PLAIN_NORM)
    )
    ones = keras.ops.ones_like(plain)
    return step.cond(
        usable,
        lambda: keras.ops.stack([plain, ones], axis=1),
        lambda: keras.ops.stack([_scaled_norm(x) for x in xs]),
    )


def _scaled_norm(x):
    # (largest |x|, ||x / largest||); an Inf entry gives Inf * 0: NaN.
    scale = keras.ops.max(keras.ops.abs(x))
    inverse = keras.ops.where(scale == 0, 0.0, 1.0 / scale)
    return keras.ops.stack([scale, keras.ops.sqrt(keras.ops.sum(keras.ops.square(x * inverse)))])


def _ratio(moved, size):
    # ||moved|| / ||size|| from _norms' pairs ([layers, 2]). A kernel that
    # did not move has ratio 0, even when it is all zeros; a zero kernel
    # that moved has ratio inf; NaN (a weight turned NaN) stays NaN.
    scale = moved[:, 0] / size[:, 0]
    ratio = (moved[:, 1] / size[:, 1]) * scale
    moved_or_bad = keras.ops.logical_or(moved[:, 0] > 0, keras.ops.isnan(moved[:, 0]))
    return keras.ops.where(moved_or_bad, ratio, 0.0)
