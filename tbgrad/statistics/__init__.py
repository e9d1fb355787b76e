"""The statistics tbgrad logs: one class each, listed in :data:`REGISTRY`.

The writer, the README's tag table (:func:`tbgrad.tags.markdown_table`), the
Gradient-flow tab's statistic selector and the verdict's inputs all read the
registry's :attr:`Statistic.families`. Adding a statistic is one class
(:class:`tbgrad.statistics.base.Statistic`) and one line here.
"""

from __future__ import annotations

from tbgrad.statistics.activations import ActivationHealth, ActivationHistogram
from tbgrad.statistics.base import ANY, LAST, MAX, SUM, EpochContext, Family, Setup, Statistic
from tbgrad.statistics.clipping import ClipStats
from tbgrad.statistics.gradients import (
    GradientHistogram,
    GradientMoments,
    GradientNorm,
    GradientRatio,
    SkippedSteps,
)
from tbgrad.statistics.update_ratio import UpdateRatio
from tbgrad.statistics.weights import WeightStats

# In the order they are computed and listed: a statistic may read the
# results of those before it (GradientRatio reads GradientMoments').
REGISTRY: tuple[type[Statistic], ...] = (
    GradientMoments,
    GradientNorm,
    GradientHistogram,
    WeightStats,
    GradientRatio,
    UpdateRatio,
    ActivationHealth,
    ActivationHistogram,
    ClipStats,
    SkippedSteps,
)


def families(statistics=REGISTRY) -> list[Family]:
    """Every tag family of ``statistics``, in registry order."""
    return [family for statistic in statistics for family in statistic.families]


__all__ = [
    "ANY",
    "LAST",
    "MAX",
    "REGISTRY",
    "SUM",
    "EpochContext",
    "Family",
    "Setup",
    "Statistic",
    "families",
]
