"""The statistic protocol: one statistic, one class.

In the spirit of ``keras.Metric``: a :class:`Statistic` creates its state
once (:meth:`Statistic.add_state`), computes one step's contribution
(:meth:`Statistic.update`), and turns the epoch's state into tags
(:meth:`Statistic.result`); :attr:`Statistic.families` describes its tags
(the README's tag table, the Gradient-flow tab and the verdict read them).
The collector (:class:`tbgrad.collector.Collector`), not the statistic,
decides when a step counts and how a step left out is left out; the
statistic never asks.

Writing one's own::

    class GradientMax(Statistic):
        families = (Family("grad_abs_max", meaning="largest |g| of the epoch"),)

        def __init__(self, setup):
            super().__init__(setup)
            self.add_state("peak", [len(setup.layers)], combine=MAX)

        def update(self, step, carry=None):
            return {"peak": keras.ops.stack(
                [keras.ops.max(keras.ops.abs(g)) for g in step.gradients])}

        def result(self, values, epoch):
            return epoch.per_layer("grad_abs_max", values["peak"])

and pass ``statistics=(*tbgrad.statistics.REGISTRY, GradientMax)`` to the
callback or the logger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

from tbgrad import step as _step
from tbgrad import tags
from tbgrad.variables import KernelLayer

# What a tag holds (Family.kind).
SCALAR, HISTOGRAM, TEXT = "scalar", "histogram", "text"

from tbgrad.statistics.buckets import DEFAULT_BUCKET_COUNT  # noqa: E402


def SUM(old, new):
    """Adds the step's value (the default)."""
    return old + new


def MAX(old, new):
    """Keeps the largest value."""
    return keras.ops.maximum(old, new)


def ANY(old, new):
    """Keeps whether any step was true."""
    return keras.ops.logical_or(old, new)


def LAST(old, new):
    """Keeps the last counted step's value."""
    return new


@dataclass(frozen=True)
class Family:
    """A tag family a statistic writes, as the docs and the dashboard show it.

    Args:
        name: The family, e.g. ``grad_mean_abs``; per layer the tag is
            ``<name>/<layer>``.
        meaning: What a value means (the README's tag table).
        kind: :data:`SCALAR`, :data:`HISTOGRAM` or :data:`TEXT`.
        per_layer: One tag per tracked variable, or one for the run.
        when: When it is written (the README's "when" column); None derives
            it from the statistic's cadence.
        boards: The TensorBoard dashboards that show it.
        scale: ``"log"`` or ``"linear"``: the Gradient-flow tab offers the
            family with that colour scale; None keeps it out of the tab.
        explains: The verdict's explanation reads it.
        row: The README row's tag text, when it is not ``train/<name>...``;
            "" folds the family into the row before it.
        condition: Written only in some runs: ``"activations"`` (layers of a
            given activation), ``"clipping"``, ``"skips"`` (a
            LossScaleOptimizer), ``"nonfinite"``; None: always.
    """

    name: str
    meaning: str
    kind: str = SCALAR
    per_layer: bool = True
    when: str | None = None
    boards: str = "Scalars"
    scale: str | None = None
    explains: bool = False
    row: str | None = None
    condition: str | None = None

    @property
    def tag_text(self) -> str:
        if self.row:
            return self.row
        suffix = "/<layer>" if self.per_layer else ""
        return f"`{tags.TRAIN_DIR}/{self.name}{suffix}`"


@dataclass(frozen=True)
class Setup:
    """What a statistic is built for: the model's tracked variables and the
    logger's options.

    Attributes:
        layers: The tracked variables (:func:`tbgrad.variables.tracked_variables`).
        activations: The watched layers
            (:func:`tbgrad.statistics.activations.activation_layers`).
        clip_limits: ``{"clipnorm": ..., "clipvalue": ...,
            "global_clipnorm": ...}`` of a clipping optimizer, else None.
        diagnostics: Whether the diagnostics are on.
        count_skips: Whether the optimizer skips steps (LossScaleOptimizer).
        bucket_count: Histogram buckets.
        reference: The index of the matrix that produces the model's output
            (:func:`tbgrad.variables.output_matrix`), which the ratios compare
            every layer with; None when no matrix is tracked.
    """

    layers: tuple[KernelLayer, ...]
    activations: tuple = ()
    clip_limits: dict | None = None
    diagnostics: bool = True
    count_skips: bool = False
    bucket_count: int = DEFAULT_BUCKET_COUNT
    reference: int | None = None

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def matrices_at(self) -> list[int]:
        """Indices of the weight matrices, in model order."""
        return [i for i, layer in enumerate(self.layers) if layer.is_matrix]

    @property
    def compared_at(self) -> list[int]:
        """Indices of the weight matrices in model order, the reference last:
        what the verdict compares."""
        if self.reference is None:
            return []
        return [i for i in self.matrices_at if i != self.reference] + [self.reference]


@dataclass
class EpochContext:
    """What a statistic's :meth:`Statistic.result` may read besides its state.

    Attributes:
        setup: The :class:`Setup`.
        histograms: Whether this epoch writes histograms.
        kernels: The tracked variables' values at the epoch's end (numpy,
            in their own dtype), in layer order.
        results: The tags the statistics before this one returned.
        skipped: Steps the optimizer skipped, or None.
    """

    setup: Setup
    histograms: bool
    kernels: list[np.ndarray]
    results: dict = field(default_factory=dict)
    skipped: int | None = None

    def per_layer(self, family: str, values, names=None) -> dict:
        """``{family/<layer>: value}`` for every tracked variable."""
        names = self.setup.names if names is None else names
        return {tags.layer_tag(family, name): values[i] for i, name in enumerate(names)}


@dataclass
class _State:
    variable: keras.Variable
    combine: Callable
    initial: object


class Statistic:
    """One statistic, or a small family that shares its per-step work.

    Class attributes:
        families: The tags it writes (:class:`Family`).
        cadence: The steps it counts (:data:`tbgrad.step.EVERY`,
            ``DIAGNOSTICS``, ``HISTOGRAM``, or ``EPOCH`` for none).
        after_update: Its :meth:`update` reads the weights after the
            optimizer moved them (it runs once the update step is done).
        diagnostic: Measured only with ``diagnostics`` on.
        reads_unclipped: Its update reads ``step.unclipped``.
        reads_activations: Its update reads ``step.activations``.

    Subclasses create their state in ``__init__`` with :meth:`add_state`,
    return one step's contribution per state from :meth:`update` and the
    epoch's tags from :meth:`result`; :meth:`before` may read tensors before
    the weights move, which :meth:`update` then receives as ``carry``.
    """

    families: tuple[Family, ...] = ()
    cadence: str = _step.EVERY
    after_update: bool = False
    diagnostic: bool = False
    reads_unclipped: bool = False
    reads_activations: bool = False

    def __init__(self, setup: Setup):
        self.setup = setup
        self._states: dict[str, _State] = {}

    @classmethod
    def wanted(cls, setup: Setup) -> bool:
        """Whether this statistic applies to ``setup`` (default: when it has
        a tracked variable, and for a diagnostic, with diagnostics on)."""
        return bool(setup.layers) and (setup.diagnostics or not cls.diagnostic)

    # -- state ------------------------------------------------------------

    def add_state(self, name: str, shape, dtype="float32", combine=SUM, initial=0) -> None:
        """Creates a state variable, zeroed (``initial``) at every epoch."""
        variable = _step.new_state(f"tbgrad_{type(self).__name__}_{name}", shape, dtype, initial)
        self._states[name] = _State(variable, combine, initial)

    @property
    def state_names(self) -> list[str]:
        return list(self._states)

    def state(self, name: str) -> keras.Variable:
        return self._states[name].variable

    def combined(self, name: str, contribution):
        """The state ``name`` once ``contribution`` is added to it."""
        state = self._states[name]
        return state.combine(_step.read(state.variable), contribution)

    def reset_state(self) -> None:
        """Zeroes the state for a new epoch."""
        for state in self._states.values():
            variable = state.variable
            variable.assign(keras.ops.full(variable.shape, state.initial, variable.dtype))

    # -- the protocol -----------------------------------------------------

    def before(self, step: _step.StepContext):
        """Tensors to read before the weights move (None: nothing)."""
        return None

    def update(self, step: _step.StepContext, carry=None) -> dict:
        """One counted step's contribution: ``{state name: tensor}``."""
        return {}

    def result(self, values: dict, epoch: EpochContext) -> dict:
        """The epoch's ``{tag: value}`` from ``values`` (the state as numpy)."""
        return {}

    def step_result(self) -> dict:
        """``{tag: tensor}`` of the last counted step, for ``update_freq=N``."""
        return {}

    def first_nonfinite(self, values: dict, epoch: EpochContext) -> dict | None:
        """The epoch's first non-finite value this statistic saw:
        ``{"what", "layer", "step"}``, or None."""
        return None
