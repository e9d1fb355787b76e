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
        moved, size, bad = [], [], []
        for kernel, before in [(step.kernels[i], carry[i]) for i in self.at]:
            after = keras.ops.cast(kernel, "float32")
            delta = after - before
            # Each norm taken of its vector divided by its largest entry,
            # times that entry: the squares of weights past ~1e19 (or of a
            # tiny kernel moved far) stay within float32. NaN stays NaN.
            moved.append(_norm(delta))
            size.append(_norm(before))
            bad.append(keras.ops.logical_not(keras.ops.all(keras.ops.isfinite(after))))
        bad = keras.ops.stack(bad)
        ratio = _ratio(keras.ops.stack(moved), keras.ops.stack(size))
        return {
            # A weight turned NaN or Inf gives NaN, whatever its max reads.
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


def _norm(x):
    # ||x|| as (largest |x|, ||x / largest||): two float32 numbers that do
    # not overflow where ||x||^2 would.
    scale = keras.ops.max(keras.ops.abs(x))
    inverse = keras.ops.where(scale == 0, 0.0, 1.0 / scale)
    return keras.ops.stack([scale, keras.ops.sqrt(keras.ops.sum(keras.ops.square(x * inverse)))])


def _ratio(moved, size):
    # ||moved|| / ||size|| from _norm's pairs ([layers, 2]). A kernel that
    # did not move has ratio 0, even when it is all zeros; a zero kernel
    # that moved has ratio inf; NaN (a weight turned NaN) stays NaN.
    scale = moved[:, 0] / size[:, 0]
    ratio = (moved[:, 1] / size[:, 1]) * scale
    moved_or_bad = keras.ops.logical_or(moved[:, 0] > 0, keras.ops.isnan(moved[:, 0]))
    return keras.ops.where(moved_or_bad, ratio, 0.0)
