"""Saturated and dead units, from the outputs of the training forward pass.

:class:`ActivationTap` wraps each watched layer's activation
(:func:`tbgrad._compat.wrap_activation`): the wrapper keeps the outputs of a
``training=True`` call, and the train step that applies the gradients hands
them to :class:`ActivationHealth` and :class:`ActivationHistogram` (no extra
forward pass). A forward pass and optimizer step in different
``tf.function`` s (or one of them eager) add nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import keras
import numpy as np

from tbgrad import _compat, tags
from tbgrad import step as _step
from tbgrad.statistics.base import ANY, LAST, Family, Statistic
from tbgrad.statistics.buckets import float32_buckets, to_buckets

TANH, SIGMOID, RELU = "tanh", "sigmoid", "relu"
# A tanh unit is saturated beyond |a| > 0.97 (Karpathy, "makemore" part 3):
# its local gradient 1 - a^2 is then below 0.06. A sigmoid unit likewise
# below 0.03 or above 0.97 (local gradient a(1 - a) below 0.03).
TANH_SATURATED_ABOVE = 0.97
SIGMOID_SATURATED = (0.03, 0.97)
ACTIVATION_KINDS = (TANH, SIGMOID, RELU)


@dataclass(frozen=True)
class ActivationLayer:
    """A layer whose outputs tbgrad watches: its tag name, the layer, the
    activation (:data:`ACTIVATION_KINDS`) and its number of units."""

    name: str
    layer: keras.layers.Layer
    kind: str
    units: int


def activation_layers(model: keras.Model, layers) -> list[ActivationLayer]:
    """The layers of ``model`` among ``layers`` (from
    :func:`tbgrad.variables.tracked_variables`, by their kernels) whose activation
    is tanh, sigmoid or relu, in model order.

    Only layers whose output units are known and that apply their
    activation once per call: ``Dense`` and the channels-last convolutions
    (``Conv1D``/``2D``/``3D`` and their transposes); not recurrent cells,
    which apply theirs at every time step inside a loop.
    """
    names = {id(layer.kernel): layer.name for layer in layers if layer.is_kernel}
    out = []
    for layer in _walk(model):
        kernel = getattr(layer, "kernel", None)
        kind = getattr(getattr(layer, "activation", None), "__name__", None)
        units = _output_units(layer)
        if kernel is None or id(kernel) not in names or kind not in ACTIVATION_KINDS:
            continue
        if units is not None:
            out.append(ActivationLayer(names[id(kernel)], layer, kind, units))
    return sorted(out, key=lambda a: list(names.values()).index(a.name))


def _output_units(layer) -> int | None:
    # The size of the output's last axis, for the layers watched; None for
    # any other layer.
    if isinstance(layer, keras.layers.Dense):
        return int(layer.units)
    convolutions = (
        keras.layers.Conv1D,
        keras.layers.Conv2D,
        keras.layers.Conv3D,
        keras.layers.Conv1DTranspose,
        keras.layers.Conv2DTranspose,
        keras.layers.Conv3DTranspose,
    )
    if isinstance(layer, convolutions) and not isinstance(
        layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    ):
        if getattr(layer, "data_format", "channels_last") == "channels_last":
            return int(layer.filters)
    return None


def _walk(layer):
    yield layer
    for sub in _compat.sublayers(layer):
        yield from _walk(sub)


class ActivationTap:
    """Keeps the watched layers' outputs of each training forward pass.

    :meth:`attach` wraps the layers' activations, :meth:`detach` restores
    them; :meth:`take` hands the outputs of the step being traced over.
    """

    def __init__(self, layers: list[ActivationLayer]):
        self.layers = list(layers)
        # Outputs of the forward pass being traced, by thread (a
        # MirroredStrategy traces each replica in a thread of its own).
        self._pending: dict[int, dict[int, object]] = {}
        self._installed: list = []
        # Called with the outputs once every watched layer has produced its
        # own in one forward pass, instead of keeping them for take().
        self.on_forward = None

    def attach(self) -> None:
        if self._installed:
            return
        for i, watched in enumerate(self.layers):
            if _compat.wrap_activation(watched.layer, self._seen_by(i)):
                self._installed.append((watched.layer, watched.layer.activation))

    def detach(self) -> None:
        """Restores the layers' activations (those still wrapped by this tap:
        another logger may have wrapped a layer since)."""
        for layer, wrapper in self._installed:
            if layer.activation is wrapper:
                _compat.unwrap_activation(layer)
        self._installed = []
        self._pending.clear()

    def _seen_by(self, i: int):
        def seen(output):
            if _compat.in_graph() and _compat.keras_training():
                pending = self._pending.setdefault(threading.get_ident(), {})
                pending[i] = output
                if self.on_forward is not None and len(pending) == len(self.layers):
                    del self._pending[threading.get_ident()]
                    self.on_forward([pending[j] for j in range(len(self.layers))])

        return seen

    def take(self) -> list | None:
        """The outputs kept in this trace's forward pass, one per layer, or
        None when a layer's is missing (or from another graph)."""
        pending = self._pending.pop(threading.get_ident(), {})
        if not self.layers or not _compat.in_graph():
            return None
        outputs = [pending.get(i) for i in range(len(self.layers))]
        for watched, a in zip(self.layers, outputs):
            if a is None or not _compat.visible_in_current_graph(a):
                return None
            if getattr(a.shape, "rank", len(a.shape)) is None or a.shape[-1] != watched.units:
                return None  # not the layer's output as watched
        return outputs


class _ActivationStatistic(Statistic):
    """A diagnostic of the watched layers' outputs (:attr:`layers`)."""

    diagnostic = True
    reads_activations = True

    @classmethod
    def wanted(cls, setup):
        return setup.diagnostics and bool(setup.activations)

    def __init__(self, setup):
        super().__init__(setup)
        self.layers = list(setup.activations)


class ActivationHealth(_ActivationStatistic):
    """Per watched layer and step: for tanh and sigmoid the share of outputs
    saturated (:data:`TANH_SATURATED_ABOVE`, :data:`SIGMOID_SATURATED`); for
    relu the share that are 0, and per unit whether it was positive for any
    sample (a unit never positive in the epoch's measured steps is dead).
    Under several replicas the shares and dead units cover every replica's
    part of the batch."""

    families = (
        Family(
            tags.ACTIVATION_SATURATED,
            "share of outputs saturated in training steps (tanh \\|a\\| > 0.97; sigmoid "
            "a < 0.03 or a > 0.97), epoch mean",
            when="tanh and sigmoid layers",
            boards="Scalars, Gradient flow",
            explains=True,
            condition="activations",
        ),
        Family(
            tags.ACTIVATION_ZERO,
            "share of outputs that are 0, epoch mean; share of units 0 for every sample of the "
            "measured steps (dead)",
            when="relu layers",
            boards="Scalars, Gradient flow",
            explains=True,
            row=f"`{tags.TRAIN_DIR}/{tags.ACTIVATION_ZERO}/<layer>`, "
            f"`{tags.TRAIN_DIR}/{tags.ACTIVATION_DEAD}/<layer>`",
            condition="activations",
        ),
        Family(tags.ACTIVATION_DEAD, "", explains=True, row="", condition="activations"),
    )
    cadence = _step.DIAGNOSTICS

    def __init__(self, setup):
        super().__init__(setup)
        relu_units = sum(a.units for a in self.layers if a.kind == RELU)
        self.add_state("shares", [len(self.layers)])
        self.add_state("steps", [], _step.WIDE_INT)
        self.add_state("alive", [max(relu_units, 1)], "bool", combine=ANY, initial=False)
        self._limits = _unit_limits(self.layers)

    def update(self, step, carry=None):
        if step.activations is None:
            return {}
        outputs = [keras.ops.cast(a, "float32") for a in step.activations]
        if all(len(a.shape) == 2 for a in outputs) and len(outputs) > 1:
            counts, sizes, positive = self._flat_counts(outputs)
        else:
            counts, sizes, positive = self._layer_counts(outputs)
        # Each replica saw its part of the batch: the counts add up; a unit
        # is alive if it is in any replica.
        counts, sizes = step.replica_sum([counts, sizes])
        out = {
            "shares": keras.ops.where(sizes > 0, counts / keras.ops.maximum(sizes, 1.0), 0.0),
            "steps": keras.ops.ones([], _step.WIDE_INT),
        }
        if positive is not None:
            out["alive"] = step.replica_sum(positive) > 0
        return out

    def _flat_counts(self, outputs):
        # Every layer's [batch, units] outputs side by side, tested against
        # per-unit limits in a dozen ops whatever the depth (a few ops per
        # layer cost more than the tests themselves on small layers).
        low, high, segments, relu = self._limits
        flat = keras.ops.concatenate(outputs, axis=1)
        flags = keras.ops.logical_or(keras.ops.less(flat, low), keras.ops.greater(flat, high))
        flags = keras.ops.cast(flags, "float32")
        per_unit = keras.ops.sum(flags, axis=0)
        counts = keras.ops.segment_sum(per_unit, segments, len(self.layers))
        rows = keras.ops.cast(keras.ops.shape(flat)[0], "float32")
        sizes = rows * keras.ops.convert_to_tensor([float(a.units) for a in self.layers])
        # A relu unit is positive where it is not flagged (flagged: 0).
        positive = None if relu is None else keras.ops.take(rows - per_unit, relu)
        return counts, sizes, positive

    def _layer_counts(self, outputs):
        # Layer by layer, for outputs of any rank (a unit: the last axis).
        counts, sizes, positive = [], [], []
        for watched, a in zip(self.layers, outputs):
            if watched.kind == TANH:
                flags = keras.ops.abs(a) > TANH_SATURATED_ABOVE
            elif watched.kind == SIGMOID:
                low, high = SIGMOID_SATURATED
                flags = keras.ops.logical_or(a < low, a > high)
            else:
                flags = keras.ops.logical_not(a > 0)
                units = keras.ops.reshape(keras.ops.cast(a > 0, "float32"), [-1, watched.units])
                positive.append(keras.ops.sum(units, axis=0))
            counts.append(keras.ops.sum(keras.ops.cast(flags, "float32")))
            sizes.append(keras.ops.cast(keras.ops.size(flags), "float32"))
        positive = keras.ops.concatenate(positive, axis=0) if positive else None
        return keras.ops.stack(counts), keras.ops.stack(sizes), positive

    def result(self, values, epoch):
        steps = int(values["steps"])
        if steps == 0:
            return {}
        shares = np.asarray(values["shares"], np.float64) / steps
        alive = np.asarray(values["alive"], bool)
        out, start = {}, 0
        for i, watched in enumerate(self.layers):
            if watched.kind == RELU:
                units = alive[start : start + watched.units]
                start += watched.units
                out[tags.layer_tag(tags.ACTIVATION_ZERO, watched.name)] = float(shares[i])
                out[tags.layer_tag(tags.ACTIVATION_DEAD, watched.name)] = float(1 - units.mean())
            else:
                out[tags.layer_tag(tags.ACTIVATION_SATURATED, watched.name)] = float(shares[i])
        return out


class ActivationHistogram(_ActivationStatistic):
    """The watched layers' outputs in the epoch's first training step (the
    first replica's part under several replicas)."""

    families = (
        Family(
            tags.ACTIVATIONS,
            "the layer's outputs in the epoch's first training step",
            kind="histogram",
            when="every `histogram_freq` epochs (diagnostics)",
            boards="Histograms",
            condition="activations",
        ),
    )
    cadence = _step.HISTOGRAM

    def __init__(self, setup):
        super().__init__(setup)
        shape = [len(self.layers), setup.bucket_count + 2]
        self.add_state("buckets", shape, combine=LAST)
        self.add_state("steps", [], _step.WIDE_INT)

    def update(self, step, carry=None):
        if step.activations is None:
            return {}
        k = self.setup.bucket_count
        rows = [float32_buckets(step, a, k) for a in step.activations]
        return {"buckets": keras.ops.stack(rows), "steps": keras.ops.ones([], _step.WIDE_INT)}

    def result(self, values, epoch):
        if not epoch.histograms or int(values["steps"]) == 0:
            return {}
        out = {}
        for watched, row in zip(self.layers, np.asarray(values["buckets"], np.float64)):
            if row[2:].sum() > 0:
                buckets = to_buckets(row, self.setup.bucket_count)
                out[tags.layer_tag(tags.ACTIVATIONS, watched.name)] = buckets
        return out


def _unit_limits(layers: list[ActivationLayer]):
    # Per unit of the layers side by side: an output below ``low`` or above
    # ``high`` is flagged (saturated; for relu, 0: below the smallest
    # positive float32); the layer of each unit; where the relu units are.
    low, high, segments, relu, start = [], [], [], [], 0
    limits = {
        TANH: (-TANH_SATURATED_ABOVE, TANH_SATURATED_ABOVE),
        SIGMOID: SIGMOID_SATURATED,
        RELU: (float(np.finfo(np.float32).tiny), np.inf),
    }
    for i, watched in enumerate(layers):
        lo, hi = limits[watched.kind]
        low += [lo] * watched.units
        high += [hi] * watched.units
        segments += [i] * watched.units
        if watched.kind == RELU:
            relu += range(start, start + watched.units)
        start += watched.units
    # numpy, not tensors: a tensor belongs to the graph it was made in.
    return (
        np.array(low, np.float32),
        np.array(high, np.float32),
        np.array(segments, np.int32),
        np.array(relu, np.int32) if relu else None,
    )
