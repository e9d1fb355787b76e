"""The weights at the end of each epoch: mean, std, sum |w| and a histogram.

No per-step work: the collector reads the tracked variables once an epoch
and hands them over as numpy (:attr:`EpochContext.kernels`).
"""

from __future__ import annotations

import numpy as np

from tbgrad import step as _step
from tbgrad import tags
from tbgrad.statistics.base import Family, Statistic
from tbgrad.statistics.buckets import histogram_buckets


class WeightStats(Statistic):
    """Mean, standard deviation and sum of |w| of each tracked variable, and
    its histogram in an epoch that writes histograms."""

    families = (
        Family(
            tags.WEIGHTS,
            "histogram of the matrix at the end of the epoch",
            kind="histogram",
            when="every `histogram_freq` epochs",
            boards="Histograms, Distributions",
        ),
        Family(tags.WEIGHT_MEAN, "mean of the matrix at the end of the epoch", scale="linear"),
        Family(
            tags.WEIGHT_STD,
            "standard deviation of the matrix at the end of the epoch",
            boards="Scalars, Gradient flow",
            scale="log",
        ),
        Family(tags.WEIGHT_L1, "sum of \\|w\\| of the matrix", scale="log"),
    )
    cadence = _step.EPOCH

    def result(self, values, epoch):
        kernels = epoch.kernels
        out = {}
        if epoch.histograms:
            k = self.setup.bucket_count
            out.update(epoch.per_layer(tags.WEIGHTS, [histogram_buckets(w, k) for w in kernels]))
        # Summed in float64 one kernel at a time (no float64 copy of the model).
        f8 = np.float64
        out.update(epoch.per_layer(tags.WEIGHT_MEAN, [w.mean(dtype=f8) for w in kernels]))
        out.update(epoch.per_layer(tags.WEIGHT_STD, [w.std(dtype=f8) for w in kernels]))
        out.update(epoch.per_layer(tags.WEIGHT_L1, [np.abs(w).sum(dtype=f8) for w in kernels]))
        return out

    def first_nonfinite(self, values, epoch):
        # Only the epoch's final weights: the step is unknown (None).
        for name, kernel in zip(epoch.setup.names, epoch.kernels):
            if not np.isfinite(kernel).all():
                return {"what": "weight", "layer": name, "step": None}
        return None
