"""Runs the registry's statistics for one model, step by step and epoch by epoch.

:class:`Collector` builds one :class:`~tbgrad.step.StepContext` per train
step from what the optimizer hook hands over, decides which cadences count
the step, and runs every statistic's update under the logger's
:class:`~tbgrad.step.ExecutionPolicy`: a group of statistics on a cadence
runs in one branch (or computed and masked), and each state is combined the
same way whatever the mode. It does no I/O: :meth:`Collector.epoch` returns
the epoch's ``{tag: value}`` for the writer.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from tbgrad import _compat
from tbgrad import step as _step
from tbgrad._validate import check_int
from tbgrad.statistics import REGISTRY
from tbgrad.statistics.activations import ActivationTap
from tbgrad.statistics.base import EpochContext, Setup, Statistic

# The per-step cadences, in the order their groups run within a step.
STEP_CADENCES = (_step.EVERY, _step.DIAGNOSTICS, _step.HISTOGRAM)


@dataclass(frozen=True)
class Epoch:
    """One epoch as the statistics saw it.

    Attributes:
        values: ``{tag: value}``: a float for a scalar, a ``[k, 3]`` array
            for a histogram.
        seen: The epoch's applied steps (also those ``stats_every`` leaves
            out; not those a LossScaleOptimizer skipped).
        skipped: Steps the optimizer skipped, or None when not counted.
        first_nonfinite: The epoch's first non-finite gradient or weight:
            ``{"what": "gradient" or "weight", "layer", "step"}`` (the step's
            index in the epoch, None when only the epoch's final weights
            showed it), or None.
    """

    values: dict
    seen: int
    skipped: int | None = None
    first_nonfinite: dict | None = None


class Collector:
    """The statistics of one model, updated inside its train step.

    Args:
        setup: What the statistics are built for (:class:`Setup`).
        policy: How the train step runs (:class:`tbgrad.step.ExecutionPolicy`).
        stats_every: The gradient record counts the epoch's steps 0, N, 2N, ...
        diagnostics_every: The diagnostics measure the epoch's steps 0, N,
            2N, ...
        statistics: The statistic classes (default
            :data:`tbgrad.statistics.REGISTRY`); those whose ``wanted(setup)``
            is false are left out.

    Create it in the distribution strategy's scope (if any), and
    :meth:`attach` it before the train step is traced.
    """

    def __init__(
        self,
        setup: Setup,
        policy: _step.ExecutionPolicy | None = None,
        stats_every: int = 1,
        diagnostics_every: int = _step.DEFAULT_DIAGNOSTICS_EVERY,
        statistics=REGISTRY,
    ):
        self.setup = setup
        self.policy = policy or _step.ExecutionPolicy()
        self.every = {
            _step.EVERY: check_int("stats_every", stats_every, 1),
            _step.DIAGNOSTICS: check_int("diagnostics_every", diagnostics_every, 1),
        }
        self.statistics: list[Statistic] = [cls(setup) for cls in statistics if cls.wanted(setup)]
        self._seen = _step.new_state("tbgrad_seen", [], _step.WIDE_INT)
        self._skipped = _step.new_state("tbgrad_skipped", [], _step.WIDE_INT)
        self._capture = _step.new_state("tbgrad_capture", [], "bool", True)
        watches = any(stat.reads_activations for stat in self.statistics)
        self._tap = ActivationTap(list(setup.activations)) if watches else None
        self._steps = _step.ThreadSteps()
        # On JAX the forward pass is traced inside the gradient: what it
        # produced cannot reach the update step, so the activation
        # statistics run in the forward pass itself, on a state of their
        # own that the model carries (forward_variables).
        self._forward: list[Statistic] = []
        if watches and _step.ON_JAX:
            self._forward = [s for s in self.statistics if s.reads_activations]
            self._forward_seen = _step.new_state("tbgrad_forward_seen", [], _step.WIDE_INT)
            self._forward_capture = _step.new_state("tbgrad_forward_capture", [], "bool", True)
            self._tap.on_forward = self._forward_step

    @property
    def names(self) -> list[str]:
        """The tracked variables' tag names, in layer order."""
        return self.setup.names

    @property
    def kernel_names(self) -> list[str]:
        """The tracked weight matrices' names, in model order with the output
        layer (:attr:`Setup.reference`) last: what the verdict compares."""
        return [self.setup.names[i] for i in self.setup.compared_at]

    @property
    def compared_names(self) -> list[str]:
        """Every tracked variable but the output layer, whose mean |g| the
        others' ``grad_log10_ratio`` is relative to."""
        return [n for i, n in enumerate(self.setup.names) if i != self.setup.reference]

    @property
    def variables(self) -> list[keras.Variable]:
        """Every variable the statistics keep (the state they persist)."""
        return self.step_variables + self.forward_variables

    @property
    def step_variables(self) -> list[keras.Variable]:
        """The state updated in the optimizer's update step."""
        own = [self._seen, self._skipped, self._capture]
        stats = [s for s in self.statistics if s not in self._forward]
        return own + [stat.state(n) for stat in stats for n in stat.state_names]

    @property
    def forward_variables(self) -> list[keras.Variable]:
        """The state updated in the training forward pass (JAX only)."""
        if not self._forward:
            return []
        own = [self._forward_seen, self._forward_capture]
        return own + [stat.state(n) for stat in self._forward for n in stat.state_names]

    # -- attaching ----------------------------------------------------------

    def attach(self) -> None:
        """Starts watching the activations (wraps the watched layers')."""
        if self._tap is not None:
            self._tap.attach()

    def detach(self) -> None:
        """Restores the watched layers and forgets any step being traced."""
        if self._tap is not None:
            self._tap.detach()
        self._steps.clear()

    # -- inside the train step (called by tbgrad.hook.OptimizerHook) --------

    def begin_update(self, unclipped) -> None:
        """The optimizer has the step's gradients before clipping; the weights
        have not moved yet."""
        step = self._start()
        if any(stat.reads_unclipped for stat in self.statistics):
            # Under several replicas an embedding's rows differ by replica:
            # the sum over replicas needs the dense gradient.
            values = _compat.densify if self.policy.replicas > 1 else _compat.dense_values
            dense = [values(g) for g in unclipped if g is not None]
            step.unclipped = step.replica_sum(dense) if dense else []
        for stat in self.statistics:
            if type(stat).before is not Statistic.before:
                step.carry[id(stat)] = self._before(step, stat)

    def update(self, grads, variables) -> None:
        """The gradients the optimizer applies (inside the train step)."""
        step = self._start()
        gradients = _select(self.setup.layers, grads, variables)
        if gradients is None:
            self._steps.end()  # no tracked gradient: not a step of ours
            return
        self._seen.assign_add(keras.ops.ones([], _step.WIDE_INT))
        step.gradients, step.absent = self.policy.applied(gradients)
        self._run(step, [s for s in self._in_step() if not _at_end(s)])

    def end_update(self) -> None:
        """The optimizer's update has moved the weights; the step ends."""
        step = self._steps.end()
        if step is not None and step.gradients is not None:
            self._run(step, [s for s in self._in_step() if _at_end(s)])

    def _in_step(self) -> list[Statistic]:
        return [s for s in self.statistics if s not in self._forward]

    def _forward_step(self, activations) -> None:
        # One training forward pass's outputs (JAX): the activation
        # statistics on their own step count, computed and masked.
        index = _step.read(self._forward_seen)
        self._forward_seen.assign_add(keras.ops.ones([], _step.WIDE_INT))
        due = {_step.DIAGNOSTICS: self._due(index, _step.DIAGNOSTICS)}
        due[_step.HISTOGRAM] = keras.ops.logical_and(
            keras.ops.equal(index, 0), _step.read(self._forward_capture)
        )
        step = _step.StepContext(self.policy, index, due, [], activations)
        self._run(step, self._forward)

    def skip(self) -> None:
        """Counts a step the optimizer skipped (LossScaleOptimizer)."""
        self._skipped.assign_add(keras.ops.ones([], _step.WIDE_INT))

    def _start(self) -> _step.StepContext:
        step = self._steps.current()
        if step is not None:
            return step
        index = _step.read(self._seen)  # counted by update(), once it has gradients
        used = {stat.cadence for stat in self.statistics}
        due = {cadence: self._due(index, cadence) for cadence in self.every if cadence in used}
        if _step.HISTOGRAM in used:
            due[_step.HISTOGRAM] = keras.ops.logical_and(
                keras.ops.equal(index, 0), _step.read(self._capture)
            )
        kernels = [layer.kernel for layer in self.setup.layers]
        activations = self._tap.take() if self._tap is not None else None
        return self._steps.start(_step.StepContext(self.policy, index, due, kernels, activations))

    def _due(self, index, cadence):
        every = self.every[cadence]
        return None if every == 1 else keras.ops.equal(index % every, 0)

    def _before(self, step, stat):
        due = step.due[stat.cadence]
        # A masked step reads always, but on PyTorch, whose eager branch is
        # free and whose reads are copies (a JAX read is one already).
        if due is None or (self.policy.form == _step.MASK and not _step.ON_TORCH):
            return _step.snapshot(stat.before(step))
        # A step left out reads nothing: one empty tensor per variable.
        return self.policy.cond(
            due,
            lambda: _step.snapshot(stat.before(step)),
            lambda: [keras.ops.zeros([0], "float32") for _ in step.kernels],
        )

    def _run(self, step, statistics) -> None:
        for cadence in STEP_CADENCES:
            group = [s for s in statistics if s.cadence == cadence]
            if not group:
                continue
            due = step.due[cadence]

            def update(group=group, due=None):
                for stat in group:
                    _assign(stat, stat.update(step, step.carry.get(id(stat))), due)

            if due is None:
                update()
            elif self.policy.form == _step.BRANCH:
                self.policy.when(due, update)
            elif not _step.ON_TENSORFLOW:
                _select_states(step, group, due)
            else:
                update(due=due)

    # -- between epochs -------------------------------------------------------

    def reset(self, capture: bool = True) -> None:
        """Starts a new epoch; ``capture``: its histograms are due."""
        for stat in self.statistics:
            stat.reset_state()
        self._seen.assign(keras.ops.zeros([], _step.WIDE_INT))
        self._skipped.assign(keras.ops.zeros([], _step.WIDE_INT))
        self._capture.assign(keras.ops.convert_to_tensor(capture, "bool"))
        if self._forward:
            self._forward_seen.assign(keras.ops.zeros([], _step.WIDE_INT))
            self._forward_capture.assign(keras.ops.convert_to_tensor(capture, "bool"))

    def snapshot_tensors(self) -> dict:
        """Every state and the tracked variables, as tensors (graph or
        eager): a compiled epoch returns these with its other results, so
        that reading them costs no eager op per statistic; pass their numpy
        values to :meth:`epoch`."""
        out = {
            "seen": _step.read(self._seen),
            "skipped": _step.read(self._skipped),
            "kernels": [keras.ops.convert_to_tensor(layer.kernel) for layer in self.setup.layers],
        }
        for i, stat in enumerate(self.statistics):
            for name in stat.state_names:
                out[f"{i}/{name}"] = _step.read(stat.state(name))
        return out

    def epoch(self, snapshot: dict | None = None, histograms: bool = True) -> Epoch:
        """The epoch's tags from ``snapshot`` (numpy values of
        :meth:`snapshot_tensors`; None reads the variables)."""
        if snapshot is None:
            snapshot = _to_numpy(self.snapshot_tensors())
        kernels = [np.asarray(k) for k in snapshot["kernels"]]
        skipped = int(snapshot["skipped"]) if self.setup.count_skips else None
        context = EpochContext(self.setup, bool(histograms), kernels, skipped=skipped)
        found = []
        for i, stat in enumerate(self.statistics):
            values = {name: snapshot[f"{i}/{name}"] for name in stat.state_names}
            context.results.update(stat.result(values, context))
            first = stat.first_nonfinite(values, context)
            if first is not None:
                found.append(first)
        return Epoch(context.results, int(snapshot["seen"]), skipped, _earliest(found))

    def step_tensors(self) -> dict:
        """``{tag: tensor}`` of the last counted step (``update_freq=N``)."""
        out = {}
        for stat in self.statistics:
            out.update(stat.step_result())
        return out

    def families(self) -> dict[str, str]:
        """``{family: kind}`` of the statistics in use."""
        return {f.name: f.kind for stat in self.statistics for f in type(stat).families}


def _at_end(stat: Statistic) -> bool:
    # Whether ``stat`` runs once the weights moved: those that read them,
    # and every statistic on a sampled cadence, so that each cadence's
    # group runs in one branch per step.
    return stat.after_update or stat.cadence != _step.EVERY


def _assign(stat: Statistic, contributions: dict, due=None) -> None:
    for name, contribution in contributions.items():
        variable = stat.state(name)
        new = stat.combined(name, contribution)
        if due is not None:
            new = keras.ops.where(due, new, _step.read(variable))
        variable.assign(new)


def _select_states(step, group: list[Statistic], due) -> None:
    # JAX and PyTorch: one conditional picks every state's new value (the
    # group's work runs only on a step it counts; a JAX branch may not
    # assign variables, so the values are assigned after it).
    def updated():
        out = []
        for stat in group:
            contributions = stat.update(step, step.carry.get(id(stat)))
            out.append(
                {
                    name: stat.combined(name, contributions[name])
                    if name in contributions
                    else _step.read(stat.state(name))
                    for name in stat.state_names
                }
            )
        return out

    def kept():
        return [{name: _step.read(stat.state(name)) for name in stat.state_names} for stat in group]

    for stat, values in zip(group, step.cond(due, updated, kept)):
        for name, value in values.items():
            stat.state(name).assign(value)


def _earliest(found: list[dict]) -> dict | None:
    # The first event in a step (a gradient before a weight in the same
    # step: the statistics are listed in that order), else the epoch's end.
    in_steps = [f for f in found if f["step"] is not None]
    if in_steps:
        return min(in_steps, key=lambda f: f["step"])
    return found[0] if found else None


def _select(layers, grads, variables):
    # The gradients of the tracked variables, in layer order; a tracked
    # variable without one (frozen, or not on the loss path) gets zeros
    # rather than dropping out of the tags. None when none has one.
    index = {id(layer.kernel): i for i, layer in enumerate(layers)}
    paths = {layer.kernel.path: i for i, layer in enumerate(layers)}
    out = [None] * len(layers)
    for g, v in zip(grads, variables):
        i = index.get(id(v))
        if i is None:
            i = paths.get(getattr(v, "path", None))
        if i is not None and g is not None:
            out[i] = g  # an embedding's IndexedSlices stay sparse (ExecutionPolicy.applied)
    if not layers or all(g is None for g in out):
        return None
    return [
        keras.ops.zeros(layer.kernel.shape, layer.kernel.dtype) if g is None else g
        for g, layer in zip(out, layers)
    ]


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_numpy(v) for v in tree]
    return keras.ops.convert_to_numpy(tree)


__all__ = ["Collector", "Epoch"]
